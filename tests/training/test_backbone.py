"""The real Qwen2.5-VL-3B path where shapes matter: a saved folder with the real file layout, vocabulary
(151,643 BPE-sized entries + 22 special tokens in 151,936 embedding rows), tied embeddings, bf16 weights and the
real image-processor settings; only the layer sizes are tiny. No torchvision, no downloads."""

import json

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout
from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval
from modeling_sigma.training.backbone import build_sigma_model, load_pretrained_processor

QWEN_ROWS = 151_936  # Qwen2.5-VL-3B's embedding rows (config vocab_size)
QWEN_TOKENS = 151_665  # its tokenizer: 151,643 BPE tokens + 22 special tokens
SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip
PREPROCESSOR = {  # Qwen/Qwen2.5-VL-3B-Instruct's preprocessor_config.json
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_shaped_tokenizer() -> PreTrainedTokenizerFast:
    """151,643 word-level entries (the numbers "0".."151642", so a value's digits are one token) + 22 specials."""
    vocab = {str(i): i for i in range(QWEN_TOKENS - len(SPECIAL))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    assert len(tokenizer) == QWEN_TOKENS and tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151_655
    return tokenizer


def qwen_shaped_config(tie: bool) -> Qwen2_5_VLConfig:
    text = {
        "vocab_size": QWEN_ROWS, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
        "bos_token_id": 151_643, "eos_token_id": 151_645, "dtype": "bfloat16",
    }  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "depth": 1, "num_heads": 1, "out_hidden_size": 64,
              "fullatt_block_indexes": [0]}  # fmt: skip
    ids = {"image_token_id": 151_655, "video_token_id": 151_656, "vision_start_token_id": 151_652,
           "vision_end_token_id": 151_653}  # fmt: skip
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie, **ids)


def save_qwen_folder(path, tie: bool = True):
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(qwen_shaped_config(tie)).to(torch.bfloat16)
    model.save_pretrained(path)
    qwen_shaped_tokenizer().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    (path / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    return path


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    return save_qwen_folder(tmp_path_factory.mktemp("qwen2.5-vl-3b-shaped"))


def test_processor_of_a_real_folder_needs_no_torchvision(qwen_folder):
    processor = load_pretrained_processor(str(qwen_folder))
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert processor.image_processor.size["longest_edge"] == PREPROCESSOR["max_pixels"]  # max_pixels
    assert "<|vision_start|>" in processor.chat_template
    image = Image.new("RGB", (500, 375), (90, 120, 30))  # a Flickr-sized image
    pixels = processor.image_processor(images=[image], return_tensors="pt")
    assert pixels["image_grid_thw"].tolist() == [[1, 26, 36]]  # 375x500 -> 364x504 -> 234 image tokens


def test_identifier_tokens_never_shrink_the_embeddings_and_start_from_their_digits(qwen_folder):
    layout = SigmaIdentifierLayout(k1=8, k2=4, k3=4, k4=4, suffix_size=8)  # 28 tokens: 151,693 < 151,936
    model, processor = build_sigma_model(str(qwen_folder), layout=layout)
    embeddings = model.backbone.get_input_embeddings().weight
    assert embeddings.shape[0] == QWEN_ROWS  # not shrunk to 151,693
    assert model.backbone.get_output_embeddings().weight.data_ptr() == embeddings.data_ptr()  # tied (3B)
    first = processor.tokenizer.convert_tokens_to_ids("<id1_0>")
    assert first == QWEN_TOKENS
    seventeen = processor.tokenizer.convert_tokens_to_ids("<id5_7>")
    assert torch.equal(embeddings[seventeen], embeddings[7])  # the token spelling "7"
    original = (
        Qwen2_5_VLForConditionalGeneration.from_pretrained(str(qwen_folder)).get_input_embeddings().weight
    )
    assert not torch.equal(
        embeddings[first : first + 28], original[first : first + 28]
    )  # padding rows replaced
    assert torch.equal(embeddings[:first], original[:first])  # trained rows untouched


def test_untied_head_rows_are_initialised_and_a_large_layout_grows(tmp_path):
    folder = save_qwen_folder(tmp_path / "untied", tie=False)
    layout = SigmaIdentifierLayout(k1=64, k2=32, k3=16, k4=32, suffix_size=200)  # 344 tokens: 152,009 rows
    model, processor = build_sigma_model(str(folder), layout=layout)
    rows = model.backbone.get_input_embeddings().weight.shape[0]
    assert rows >= len(processor.tokenizer) == QWEN_TOKENS + 344 and rows % 64 == 0
    head = model.backbone.get_output_embeddings().weight
    token = processor.tokenizer.convert_tokens_to_ids("<id5_199>")
    assert torch.equal(head[token], head[199]) and model.config.backbone_config.text_config.vocab_size == rows


def test_bf16_backbone_and_head_forward_without_autocast(qwen_folder, tmp_path):
    model, processor = build_sigma_model(str(qwen_folder), layout=SigmaIdentifierLayout(2, 2, 2, 2, 1, 2))
    assert model.backbone.dtype == torch.bfloat16  # dtype="auto" reads the checkpoint's bf16
    assert model.similarity_head.dense_in.weight.dtype == torch.bfloat16
    ids = processor.tokenizer("12 34 <id1_1><id2_0>", return_tensors="pt")
    output = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    assert output.similarity.dtype == torch.bfloat16 and output.similarity.shape == (1,)
    model.save_pretrained(tmp_path / "sigma")
    reloaded = SigmaForRetrieval.from_pretrained(tmp_path / "sigma", dtype=torch.bfloat16)
    assert reloaded.similarity_head.dense_out.weight.dtype == torch.bfloat16
    assert reloaded(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).similarity is not None


@pytest.mark.parametrize("patch_size, tokens", [(14, 4), (8, 16)])
def test_embedded_patch_size_sets_the_visual_tokens_and_survives_save(tmp_path, patch_size, tokens):
    """14-pixel patches see a 64-pixel image resized to 56 (4 tokens after the 2×2 merge); 8-pixel patches keep
    64 pixels (16 tokens). The vision tower and the processor agree, and a saved model keeps both."""
    model, processor = build_sigma_model("embedded", captions=["a red circle"], patch_size=patch_size)
    inputs = processor.process_images([Image.new("RGB", (64, 64), "red")], prompt="describe")
    assert int(inputs["image_grid_thw"].prod()) // 4 == tokens
    assert int((inputs["input_ids"] == model.config.backbone_config.image_token_id).sum()) == tokens
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = SigmaForRetrieval.from_pretrained(tmp_path)
    assert loaded.config.backbone_config.vision_config.patch_size == patch_size
    with torch.no_grad():
        generated = loaded.generate(**inputs, use_trie=False, max_new_tokens=2, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 2
