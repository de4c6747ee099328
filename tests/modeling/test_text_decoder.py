"""Tests for the forward passes of the identifier beam search (modeling/text_decoder.py): the lean text-only
path equals the backbone's own forward, the choice between the two, and the fused-weight cache."""

import copy

import pytest
import torch
from sigma_testing_utils import assert_same_hits, build_tiny_model

from modeling_sigma.modeling.decoding import sigma_beam_search
from modeling_sigma.modeling.fused_projections import clear_fused_weights
from modeling_sigma.modeling.modeling_sigma import CACHE_NAME
from modeling_sigma.modeling.text_decoder import SigmaModelDecoder, SigmaTextDecoder, make_decoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUERIES = [
    "a red circle",
    "two green squares next to a yellow star on a white background",  # longest: the others are left-padded
    "black cross",
    "an orange triangle above a purple circle",
]
WORDS = (
    "a red blue green small large circle square star cross next to above left of on white background".split()
)


@pytest.fixture(scope="module")
def tiny():
    model, processor, _, _ = build_tiny_model()
    model.processor = processor
    with (
        torch.no_grad()
    ):  # a sharper similarity head than the near-constant initial one, so a wrong state shows
        for linear in (model.similarity_head.dense_in, model.similarity_head.dense_hidden):
            linear.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    return model


def prompts(model, queries):
    rows = [model.processor.query_prompt_ids(query, model.config.retrieval_prompt) for query in queries]
    return model.processor.pad_prompts(rows)


def search(model, queries, lean=True, scoring="exact", num_beams=6):
    inputs = prompts(model, queries)
    return sigma_beam_search(
        model.backbone,
        inputs["input_ids"],
        inputs["attention_mask"],
        model.index.trie.children_tables(),
        model.config.identifier_token_offsets,
        num_beams,
        scoring=scoring,
        eos_token_id=model.config.eos_token_id,
        cache_name=CACHE_NAME,
        lean=lean,
    )


def decoder_of(model, queries=QUERIES[:2], lean=True):
    mask = prompts(model, queries)["attention_mask"]
    return make_decoder(model.backbone, mask, 3, model.config.layout.length, CACHE_NAME, lean=lean)


def assert_same_search(expected, actual):
    assert torch.equal(expected.codes, actual.codes) and torch.equal(expected.valid, actual.valid)
    torch.testing.assert_close(actual.scores, expected.scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(actual.pooled, expected.pooled, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ lean path == backbone forward
@pytest.mark.parametrize("scoring", ["exact", "restricted"])
@pytest.mark.parametrize("queries", [QUERIES[:1], QUERIES], ids=["batch1", "padded"])
def test_lean_decoder_equals_backbone_forward(tiny, scoring, queries):
    assert isinstance(decoder_of(tiny, queries), SigmaTextDecoder)
    assert isinstance(decoder_of(tiny, queries, lean=False), SigmaModelDecoder)
    regular = search(tiny, queries, lean=False, scoring=scoring)
    lean = search(tiny, queries, scoring=scoring)
    assert_same_search(regular, lean)
    assert lean.valid.all()


def test_padded_batch_of_32_equals_generate_per_query(tiny):
    generator = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 12, (32,), generator=generator).tolist()
    queries = [
        " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (n,), generator=generator).tolist())
        for n in lengths
    ]
    assert len({len(prompts(tiny, [query])["input_ids"][0]) for query in queries}) > 5
    batched = tiny.retrieve(queries, k=5, num_beams=8, batch_size=32)
    for query, hits in zip(queries, batched):
        assert_same_hits(tiny.retrieve([query], k=5, num_beams=8, engine="generate"), [hits])


# ---------------------------------------------------------------------------------------- the path chosen
def test_eager_attention_falls_back_to_the_backbone_forward(tiny):
    eager = copy.deepcopy(tiny)
    eager.backbone.model.language_model.config._attn_implementation = "eager"
    assert isinstance(decoder_of(eager), SigmaModelDecoder)
    assert_same_search(search(tiny, QUERIES, lean=False), search(eager, QUERIES))


@pytest.mark.parametrize("where", ["layer", "self_attn", "mlp", "norm"])
def test_hooks_on_bypassed_modules_fall_back(tiny, where):
    hooked = copy.deepcopy(tiny)
    layer = hooked.backbone.model.language_model.layers[1]
    module = {"layer": layer, "self_attn": layer.self_attn, "mlp": layer.mlp}.get(
        where, layer.input_layernorm
    )
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1) or None)
    assert isinstance(decoder_of(hooked), SigmaModelDecoder)
    search(hooked, QUERIES[:1])
    assert calls  # the hook ran: the backbone forward was used


def test_hooked_projection_is_called_not_fused(tiny):
    hooked = copy.deepcopy(tiny)
    attention = hooked.backbone.model.language_model.layers[0].self_attn
    calls = []

    def shift(module, inputs, output):  # changes the result, so bypassing the hook would show
        calls.append(1)
        return output + 0.5

    attention.q_proj.register_forward_hook(shift)
    decoder = decoder_of(hooked)
    assert isinstance(decoder, SigmaTextDecoder)
    assert decoder.fused[0] is None and decoder.fused[1] is not None
    lean = search(hooked, QUERIES)
    assert calls
    assert_same_search(search(hooked, QUERIES, lean=False), lean)
    assert not torch.allclose(search(tiny, QUERIES).scores, lean.scores)


def test_lora_wrapped_projections_are_called_not_fused(tiny):
    peft = pytest.importorskip("peft")
    adapted = copy.deepcopy(tiny)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.inject_adapter_in_model(config, adapted.backbone.model.language_model)
    decoder = decoder_of(adapted)
    assert isinstance(decoder, SigmaTextDecoder) and decoder.fused == [None, None]
    lean = search(adapted, QUERIES)
    assert_same_search(search(adapted, QUERIES, lean=False), lean)
    assert not torch.allclose(search(tiny, QUERIES).scores, lean.scores)  # the adapters took part


def test_linear_subclass_is_called_not_fused(tiny):
    class ScaledLinear(torch.nn.Linear):
        def forward(self, hidden):
            return 2 * super().forward(hidden)

    scaled = copy.deepcopy(tiny)
    mlp = scaled.backbone.model.language_model.layers[1].mlp
    replacement = ScaledLinear(mlp.up_proj.in_features, mlp.up_proj.out_features, bias=False)
    replacement.load_state_dict(mlp.up_proj.state_dict())
    mlp.up_proj = replacement
    decoder = decoder_of(scaled)
    assert decoder.fused[0] is not None and decoder.fused[1] is None
    assert_same_search(search(scaled, QUERIES, lean=False), search(scaled, QUERIES))


# ------------------------------------------------------------------------------------ fused-weight cache
def assert_fused_follow_weights(model):
    decoder = decoder_of(model)
    for layer, fused in zip(model.backbone.model.language_model.layers, decoder.fused):
        attention, mlp = layer.self_attn, layer.mlp
        qkv = [attention.q_proj, attention.k_proj, attention.v_proj]
        half, width = attention.head_dim // 2, fused[3]
        # the half-swapped rows: within each head of q and k, the second half first
        swapped = torch.arange(width).view(-1, 2, half).flip(1).reshape(-1)
        for position, name in enumerate(("weight", "bias")):
            plain = torch.cat([getattr(linear, name) for linear in qkv])
            assert torch.equal(fused[position], torch.cat([plain, plain[swapped]]))
        assert torch.equal(fused[2], torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
    assert_same_search(search(model, QUERIES, lean=False), search(model, QUERIES))


@pytest.mark.parametrize("foreach", [False, True])
def test_fused_weights_follow_an_optimiser_step(tiny, foreach):
    model = copy.deepcopy(tiny)
    assert_fused_follow_weights(model)  # fills the cache
    optimiser = torch.optim.AdamW(model.backbone.parameters(), lr=0.05, foreach=foreach)
    batch = prompts(model, QUERIES)
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optimiser.step()
    model.eval()
    assert_fused_follow_weights(model)


def test_fused_weights_follow_load_state_dict(tiny):
    model, (other, _, _, _) = copy.deepcopy(tiny), build_tiny_model(seed=5)
    assert_fused_follow_weights(model)
    before = search(model, QUERIES).scores
    model.backbone.load_state_dict(other.backbone.state_dict())
    assert_fused_follow_weights(model)
    assert not torch.allclose(before, search(model, QUERIES).scores)
    model.backbone.load_state_dict(copy.deepcopy(tiny.backbone.state_dict()), assign=True)  # new tensors
    assert_fused_follow_weights(model)


def test_fused_weights_follow_replaced_parameters_and_clear(tiny):
    model = copy.deepcopy(tiny)
    assert_fused_follow_weights(model)
    attention = model.backbone.model.language_model.layers[0].self_attn
    attention.k_proj.weight = torch.nn.Parameter(torch.randn_like(attention.k_proj.weight))
    assert_fused_follow_weights(model)
    with (
        torch.no_grad()
    ):  # writes through `.data` bypass the version counter: clear_fused_weights is the remedy
        attention.v_proj.weight.data.mul_(3.0)
    clear_fused_weights()
    assert_fused_follow_weights(model)
