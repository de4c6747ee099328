# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""SIGMA retrieval model: a Qwen2.5-VL backbone that writes image identifiers under a trie constraint, and the
similarity head of the retrieval-alignment stage (paper section 3.2.3, eqs. 8-12)."""

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LogitsProcessorList, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from transformers.utils import ModelOutput, cached_file

from .configuration_sigma import SigmaConfig, register_sigma_config
from .decoding import SCORING_MODES, sigma_beam_search
from .file_utils import restore_interrupted_folder
from .index import INDEX_FOLDER_NAME, SigmaIndex
from .index import METADATA_FILE as INDEX_METADATA_FILE
from .index import TENSORS_FILE as INDEX_TENSORS_FILE
from .trie import SigmaTrieLogitsProcessor

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # labels of prompt and padding positions (transformers' convention)

# the pickle index of checkpoints saved before `SigmaIndex` (read with `weights_only=True`, never written)
LEGACY_INDEX_FILES = ("sigma_index.pt", "sigma_index.json")

# transformers 5.24 renamed the key/value cache from `past_key_values` to `cache`, in forward arguments and in
# output fields (ModelOutput still accepts the old keyword only for classes that have the new field). Follow
# whichever name the installed release uses, so one checkpoint works on both sides of the rename.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def label_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(predicting, targets)` of a causal LM's `labels`: the `(batch, seq - 1)` mask of positions whose next
    token is a label, and those labels `(num_labels,)` in reading order (the rows of `label_logits`)."""
    shifted = labels[:, 1:]  # (batch, seq - 1)
    predicting = shifted != IGNORE_INDEX
    return predicting, shifted[predicting]


@dataclass
class SigmaRetrievalOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*):
        `gen_loss + lambda_ssp * similarity_loss` (just `gen_loss` without similarity labels or with `lambda_ssp=0`).
    logits (`torch.FloatTensor` of shape `(batch, seq, vocab)`, *optional*):
        Language-model logits (`None` with `logits_at_labels=True`).
    label_logits (`torch.FloatTensor` of shape `(num_labels, vocab)`, *optional*):
        With `logits_at_labels=True`: the logits of the positions that predict a label, row by row in reading
        order (those of `labels[:, 1:] != -100`).
    similarity (`torch.FloatTensor` of shape `(batch,)`, *optional*):
        Similarity-head output in `[0, 1]`, from the mean last-layer state of the identifier tokens of each row.
    gen_loss (`torch.FloatTensor`, *optional*):
        Autoregressive cross-entropy on `labels` (eq. 10).
    similarity_loss (`torch.FloatTensor`, *optional*):
        MSE between `similarity` and `similarity_labels` over rows that hold identifier tokens (eq. 11).
    cache (`Cache`, *optional*):
        Key/value cache of the backbone, named `past_key_values` with transformers before 5.24 (`CACHE_NAME`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    label_logits: torch.FloatTensor | None = None
    similarity: torch.FloatTensor | None = None
    gen_loss: torch.FloatTensor | None = None
    similarity_loss: torch.FloatTensor | None = None
    if CACHE_NAME == "cache":
        cache: object | None = None
    else:
        past_key_values: object | None = None


class SigmaSimilarityHead(nn.Module):
    """Three-layer MLP + sigmoid on the pooled identifier hidden state (eq. 9)."""

    def __init__(self, hidden_size: int, inner_size: int):
        super().__init__()
        self.dense_in = nn.Linear(hidden_size, inner_size)
        self.dense_hidden = nn.Linear(inner_size, inner_size)
        self.dense_out = nn.Linear(inner_size, 1)
        self.activation = nn.GELU()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(self.dense_in(pooled))  # (batch, inner)
        hidden = self.activation(self.dense_hidden(hidden))  # (batch, inner)
        return torch.sigmoid(self.dense_out(hidden)).squeeze(-1)  # (batch,)


class SigmaPreTrainedModel(PreTrainedModel):
    config_class = SigmaConfig
    config: SigmaConfig
    base_model_prefix = "sigma"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"]
    _supports_sdpa = True
    accepts_loss_kwargs = False  # a per-batch mean loss: Trainer divides it by the accumulation steps

    def _init_weights(self, module):
        if isinstance(module, SigmaSimilarityHead):
            std = self.config.backbone_config.text_config.initializer_range
            for linear in (module.dense_in, module.dense_hidden, module.dense_out):
                nn.init.normal_(linear.weight, mean=0.0, std=std)
                nn.init.zeros_(linear.bias)


class SigmaForRetrieval(SigmaPreTrainedModel):
    r"""
    Generative text-to-image retriever: the backbone writes an identifier token by token (restricted by a trie of
    the indexed identifiers); the similarity head scores the query against the written identifier.

    Args:
        config (`SigmaConfig`): model configuration.
        backbone (`Qwen2_5_VLForConditionalGeneration`, *optional*): an already built or loaded backbone.
    """

    def __init__(self, config: SigmaConfig, backbone: Qwen2_5_VLForConditionalGeneration | None = None):
        super().__init__(config)
        # the setter propagates the checked implementation to the backbone's (and its sub-)configs
        config._attn_implementation = config._attn_implementation
        self.backbone = (
            backbone if backbone is not None else Qwen2_5_VLForConditionalGeneration(config.backbone_config)
        )
        hidden_size = config.backbone_config.text_config.hidden_size
        self.similarity_head = SigmaSimilarityHead(hidden_size, config.similarity_hidden_size)
        self.processor = None
        self.index: SigmaIndex | None = None  # the searchable identifiers (`set_index`, `from_pretrained`)
        self.post_init()
        if backbone is not None:
            self.match_head_dtype()

    def match_head_dtype(self) -> None:
        """Casts the similarity head to the backbone's dtype: a backbone loaded in bf16 (`dtype="auto"` on a Qwen
        checkpoint) beside an fp32 head fails outside autocast ("mat1 and mat2 must have the same dtype")."""
        self.similarity_head.to(dtype=self.backbone.dtype)

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.set_input_embeddings(value)

    # ----------------------------------------------------------------- forward
    def identifier_mask(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Boolean `(batch, seq)`: identifier tokens (id in the identifier range) that are not padding."""
        first, end = self.config.identifier_token_range
        mask = (input_ids >= first) & (input_ids < end)
        return mask if attention_mask is None else mask & attention_mask.bool()

    def pool_identifier_states(self, hidden_states, input_ids, attention_mask=None) -> torch.Tensor:
        """Mean last-layer state over identifier tokens (eq. 8); zeros for rows without identifier tokens."""
        mask = self.identifier_mask(input_ids, attention_mask).to(hidden_states.dtype)  # (batch, seq)
        summed = torch.einsum("bs,bsd->bd", mask, hidden_states)  # (batch, dim)
        return summed / mask.sum(dim=-1, keepdim=True).clamp(min=1)  # (batch, dim)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        similarity_labels: torch.FloatTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        logits_at_labels: bool = False,
        **kwargs,
    ) -> SigmaRetrievalOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch, seq)`, *optional*):
            Language-modelling targets (`-100` is ignored); shifted inside the loss like any causal LM.
        logits_at_labels (`bool`, *optional*, defaults to `False`):
            With `labels`: apply the LM head only where a label is predicted and return those logits as
            `label_logits` (same loss). Training asks for it: the answer is a few tokens of a long prompt, and
            `(batch, seq, vocab)` logits in fp32 are most of the activation memory with a 151k-token vocabulary.
        similarity_labels (`torch.FloatTensor` of shape `(batch,)`, *optional*):
            Teacher similarity scores in `[0, 1]` (semantic soft labels, eq. 7); `NaN` rows are ignored.
        """
        if past_key_values is None:
            past_key_values = kwargs.pop("cache", None)
        elif "cache" in kwargs:
            raise ValueError("pass the key/value cache as `cache` or as `past_key_values`, not both")
        if pixel_values is not None and mm_token_type_ids is None and input_ids is not None:
            image_token_id = self.config.backbone_config.image_token_id
            mm_token_type_ids = (input_ids == image_token_id).int()  # (batch, seq)
        if (
            position_ids is None
            and pixel_values is None
            and attention_mask is not None
            and past_key_values is None
        ):
            # text only: positions follow the attention mask so left and right padding give the same states
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (batch, seq)
        outputs = self.backbone.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            position_ids=position_ids,
            mm_token_type_ids=mm_token_type_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **{CACHE_NAME: past_key_values},
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # (batch, seq, dim)
        logits = label_logits = gen_loss = None
        if labels is not None and logits_at_labels:
            label_logits, gen_loss = self._label_logits_and_loss(hidden_states, labels)
        else:
            logits = self.backbone.lm_head(hidden_states)  # (batch, seq, vocab)
            if labels is not None:
                vocab_size = self.config.backbone_config.text_config.vocab_size
                gen_loss = self.backbone.loss_function(logits=logits, labels=labels, vocab_size=vocab_size)
        similarity = similarity_loss = None
        if input_ids is not None:
            pooled = self.pool_identifier_states(hidden_states, input_ids, attention_mask)  # (batch, dim)
            similarity = self.similarity_head(pooled)  # (batch,)
            if similarity_labels is not None:
                similarity_loss = self._similarity_loss(
                    similarity, similarity_labels, input_ids, attention_mask
                )
        loss = self._joint_loss(gen_loss, similarity_loss)
        return SigmaRetrievalOutput(
            loss=loss,
            logits=logits,
            label_logits=label_logits,
            similarity=similarity,
            gen_loss=gen_loss,
            similarity_loss=similarity_loss,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
        )

    def _label_logits_and_loss(self, hidden_states, labels):
        """LM-head logits of the positions that predict a label, and their mean cross-entropy (the causal-LM
        loss of the full logits: the other positions carry no label)."""
        predicting, targets = label_targets(labels)
        label_logits = self.backbone.lm_head(hidden_states[:, :-1][predicting])  # (num_labels, vocab)
        gen_loss = nn.functional.cross_entropy(label_logits.float(), targets)
        return label_logits, gen_loss

    def _similarity_loss(self, similarity, similarity_labels, input_ids, attention_mask):
        targets = similarity_labels.to(similarity.dtype).view(-1)  # (batch,)
        rows = self.identifier_mask(input_ids, attention_mask).any(dim=-1) & ~torch.isnan(targets)
        if not rows.any():
            return None
        return nn.functional.mse_loss(similarity[rows], targets[rows])

    def _joint_loss(self, gen_loss, similarity_loss):
        if similarity_loss is None or self.config.lambda_ssp == 0:
            return gen_loss
        weighted = self.config.lambda_ssp * similarity_loss
        return weighted if gen_loss is None else gen_loss + weighted

    # ------------------------------------------------------------------ index
    def set_index(self, codes: torch.Tensor, image_ids: list[str] | None = None) -> None:
        """Install a new `SigmaIndex` of identifier codes `(num_images, length)` and the aligned image ids."""
        self.index = SigmaIndex.from_model(self.config, codes, image_ids)

    def _require_index(self, index: SigmaIndex | None = None) -> SigmaIndex:
        index = index if index is not None else self.index
        if index is None or len(index) == 0:
            raise ValueError("no identifier index installed: call `model.set_index(codes, image_ids)` first")
        return index

    def identifier_to_image_id(self, identifier: str) -> str:
        """Image id of an identifier string such as `<id1_3><id2_0>…` in `model.index`; `KeyError` if it is
        not indexed, `ValueError` if it is malformed."""
        return self._require_index().image_id_of(identifier)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights and config, the index (`sigma_index/`, safetensors + JSON) and the attached processor."""
        super().save_pretrained(save_directory, *args, **kwargs)
        for (
            name
        ) in LEGACY_INDEX_FILES:  # an older release's index here: replaced, a checkpoint holds no pickle
            legacy = os.path.join(save_directory, name)
            if os.path.isfile(legacy):
                os.remove(legacy)
        if self.index is not None:
            index = self.index.copy()
            index.adopt(self)  # the saved index belongs to this checkpoint's config
            index.save(os.path.join(save_directory, INDEX_FOLDER_NAME))
        if self.processor is not None:
            self.processor.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load the model, then its index and processor when the checkpoint holds them."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model.match_head_dtype()
        path = str(pretrained_model_name_or_path)
        options = {
            k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs
        }
        model._load_index(path, options)
        model._load_processor(path, options)
        return model

    def _load_index(self, path: str, options: dict) -> None:
        folder = os.path.join(path, INDEX_FOLDER_NAME)
        if os.path.isdir(path):
            restore_interrupted_folder(folder)
        else:  # a Hub repo: fetch both files of the index folder into the cache
            found = [
                cached_file(
                    path,
                    name,
                    subfolder=INDEX_FOLDER_NAME,
                    _raise_exceptions_for_missing_entries=False,
                    **options,
                )
                for name in (INDEX_TENSORS_FILE, INDEX_METADATA_FILE)
            ]
            folder = os.path.dirname(found[0]) if None not in found else folder
        if os.path.isfile(os.path.join(folder, INDEX_METADATA_FILE)):
            self.index = SigmaIndex.load(folder, restore_interrupted=False)
            self.index.adopt(self)
            return
        legacy = [
            cached_file(path, name, _raise_exceptions_for_missing_entries=False, **options)
            for name in LEGACY_INDEX_FILES
        ]
        if None in legacy:
            logger.info("no identifier index in %s; call set_index before retrieve", path)
            return
        self.index = SigmaIndex.from_legacy_checkpoint(*legacy, self.config)
        logger.warning(
            "%s holds its index in the old pickle format (%s); it loaded, but re-save the checkpoint with "
            "`SigmaForRetrieval.from_pretrained(path).save_pretrained(path)` to convert it to %s/ (safetensors)",
            path, " + ".join(LEGACY_INDEX_FILES), INDEX_FOLDER_NAME,
        )  # fmt: skip

    def _load_processor(self, path: str, options: dict) -> None:
        from .processing_sigma import SigmaProcessor

        register_sigma_config()  # the tokenizer reads config.json through AutoConfig
        try:
            self.processor = SigmaProcessor.from_pretrained(path, **options)
        except (OSError, ValueError, TypeError) as error:
            logger.info("no SIGMA processor loaded from %s (%s); pass one to retrieve", path, error)

    # ------------------------------------------------------------- generation
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prefix_allowed_tokens_fn=None,
        use_trie: bool = True,
        logits_processor: LogitsProcessorList | None = None,
        index: SigmaIndex | None = None,
        **kwargs,
    ):
        """Backbone `generate` constrained to the identifiers of `index` (default `model.index`) by a
        `SigmaTrieLogitsProcessor`.

        Pass `prefix_allowed_tokens_fn` to use transformers' `PrefixConstrainedLogitsProcessor` instead, or
        `use_trie=False` for free generation (e.g. stage-2 descriptions). Inputs must be left-padded.
        """
        if input_ids is None:
            raise ValueError(
                "generate needs input_ids (use the processor's process_queries / process_images)"
            )
        kwargs.setdefault("eos_token_id", self.config.eos_token_id)
        kwargs.setdefault("pad_token_id", self.config.pad_token_id)
        kwargs.setdefault("do_sample", False)
        processors = LogitsProcessorList(logits_processor or [])
        if use_trie and prefix_allowed_tokens_fn is None:
            kwargs.setdefault("max_new_tokens", self.config.layout.length + 1)
            processors.append(
                SigmaTrieLogitsProcessor(
                    self._require_index(index).trie,
                    self.config.identifier_token_offsets,
                    prompt_length=input_ids.shape[1],
                    eos_token_id=kwargs["eos_token_id"],
                    num_beams=kwargs.get("num_beams", 1),
                )
            )
        return self.backbone.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            logits_processor=processors,
            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
            **kwargs,
        )

    # ------------------------------------------------------------ description
    @torch.no_grad()
    def describe(self, identifiers: list[str], max_new_tokens: int = 48, processor=None) -> list[str]:
        """The caption the model writes for each identifier (stage-2 comprehension), greedy and unconstrained.

        Args:
            identifiers (`list[str]`): identifier strings such as `<id1_3><id2_0>…`, indexed by this model when
                it has an index installed.
            max_new_tokens (`int`, *optional*, defaults to 48): longest caption, in tokens.
            processor (`SigmaProcessor`, *optional*): defaults to the processor loaded with the model.

        Returns:
            One caption per identifier. A malformed identifier raises `ValueError`, one that is well formed but
            not indexed raises `KeyError`; both name the identifier.
        """
        processor = self._processor_for("describe", processor, identifiers, "identifiers")
        for identifier in identifiers:
            self.config.layout.string_to_codes(identifier)  # ValueError when malformed
            if self.index is not None:
                self.index.image_id_of(identifier)  # KeyError when not indexed
        # the stage-2 training prompt (training.SigmaCollator); the identifier goes in as identifier tokens, re-written
        # from its validated codes, and nothing else of the prompt can be read as a control token
        layout, prompt = self.config.layout, self.config.comprehension_prompt
        rows = [
            processor.identifier_prompt_ids(layout.codes_to_string(layout.string_to_codes(i)), prompt)
            for i in identifiers
        ]
        inputs = processor.tokenizer.pad(
            {"input_ids": rows}, padding=True, padding_side="left", return_tensors="pt"
        )
        input_ids = inputs["input_ids"].to(self.device)  # (batch, prompt)
        sequences = self.generate(
            input_ids=input_ids,
            attention_mask=inputs["attention_mask"].to(self.device),
            use_trie=False,
            max_new_tokens=max_new_tokens,
            num_beams=1,
        )  # (batch, prompt + new)
        new_tokens = sequences[:, input_ids.shape[1] :]  # (batch, new)
        captions = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [caption.strip() for caption in captions]

    def _processor_for(self, method: str, processor, items, name: str):
        """The processor a `method` call uses, after checking that `items` is a non-empty list."""
        processor = processor if processor is not None else self.processor
        if processor is None:
            raise ValueError(
                f"{method} needs a processor: pass `processor=` or load a checkpoint that has one"
            )
        if isinstance(items, str) or not isinstance(items, (list, tuple)) or not items:
            raise ValueError(f"{name} must be a non-empty list of strings")
        return processor

    # -------------------------------------------------------------- retrieval
    @torch.no_grad()
    def retrieve(
        self,
        queries: list[str],
        k: int = 10,
        num_beams: int | None = None,
        batch_size: int = 32,
        processor=None,
        index: SigmaIndex | None = None,
        scoring: str = "exact",
        engine: str = "sigma",
        truncate: bool = False,
        on_invalid: str = "raise",
    ) -> list[list[dict]]:
        """Top-`k` distinct indexed images per text query, best beam first.

        Queries are read as plain text: special tokens, chat markup or identifier tokens written in a query stay text.

        Args:
            queries (`list[str]`): non-empty text queries (at most `config.max_query_length` prompt tokens).
            k (`int`, *optional*, defaults to 10): images per query. A `k` above the number of indexed images is
                clamped to that number with a warning.
            num_beams (`int`, *optional*): beam width, at least `k`; defaults to `max(config.num_beams, k)`.
            batch_size (`int`, *optional*, defaults to 32): queries per `generate` call.
            processor (`SigmaProcessor`, *optional*): defaults to the processor loaded with the model.
            index (`SigmaIndex`, *optional*): the images to search (e.g. a gallery or an open-set index);
                defaults to `model.index`.
            scoring (`str`, *optional*, defaults to `"exact"`): `"exact"` scores beams by log-probabilities over the
                full vocabulary (the scores of `generate`); `"restricted"` normalises each level over its identifier
                tokens only and never computes the full LM head (see `modeling.decoding`).
            engine (`str`, *optional*, defaults to `"sigma"`): `"sigma"` runs the identifier beam search of
                `modeling.decoding` (one prefill per query, similarity from the decoding states); `"generate"`
                runs transformers' beam search with `SigmaTrieLogitsProcessor` and a second forward for the
                similarity (the reference path; `"exact"` scoring only).
            truncate (`bool`, *optional*, defaults to `False`): cut a query longer than `config.max_query_length`
                prompt tokens to its longest start that fits, with a warning; by default such a query is invalid.
            on_invalid (`str`, *optional*, defaults to `"raise"`): `"raise"` raises one `ValueError` that names every
                invalid query (index and reason); `"skip"` logs the same and answers the valid queries, giving `[]`
                for the invalid ones.

        Returns:
            One list per query of `{"image_id", "identifier", "score", "similarity"}` dicts: `score` is the
            length-normalised beam log-probability, `similarity` the similarity head's score of the query with
            that identifier.
        """
        processor = self._processor_for("retrieve", processor, queries, "queries")
        if on_invalid not in ("raise", "skip"):
            raise ValueError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        index = self._require_index(index)
        size = len(index)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if k > size:
            logger.warning("k=%d is larger than the %d indexed images; returning %d per query", k, size, size)
            k = size
        if num_beams is not None and num_beams < k:
            raise ValueError(f"num_beams={num_beams} must be >= k={k}")
        num_beams = num_beams or max(self.config.num_beams, k)
        if scoring not in SCORING_MODES:
            raise ValueError(f"scoring must be one of {SCORING_MODES}, got {scoring!r}")
        if engine not in ("sigma", "generate") or (engine == "generate" and scoring != "exact"):
            raise ValueError(f"engine must be 'sigma' or 'generate' (exact scoring only), got {engine!r}")
        decode = self._generate_hits if engine == "generate" else self._decode_hits
        prompt_ids, problems = self._check_queries(list(queries), processor, truncate)
        if problems:
            listing = "; ".join(f"query {position}: {reason}" for position, reason in problems.items())
            if on_invalid == "raise":
                raise ValueError(f"{len(problems)} of {len(queries)} queries are invalid: {listing}")
            logger.warning("skipping %d of %d queries: %s", len(problems), len(queries), listing)
        valid = [position for position in range(len(queries)) if position not in problems]
        results = [[] for _ in queries]
        for start in range(0, len(valid), batch_size):
            chunk = valid[start : start + batch_size]
            hits = decode(
                self._query_inputs([prompt_ids[i] for i in chunk], processor), k, num_beams, scoring, index
            )
            for position, query_hits in zip(chunk, hits):
                results[position] = query_hits
        return results

    def _check_queries(self, queries: list, processor, truncate: bool) -> tuple[dict, dict[int, str]]:
        """Prompt ids of each valid query (over-long ones cut when `truncate`) and why each invalid one is refused."""
        limit, prompt = self.config.max_query_length, self.config.retrieval_prompt
        prompt_ids, problems = {}, {}
        for index, query in enumerate(queries):
            if not isinstance(query, str):
                problems[index] = f"not a string ({type(query).__name__})"
                continue
            if not query.strip():
                problems[index] = "empty (or only whitespace)"
                continue
            if any("\ud800" <= character <= "\udfff" for character in query):
                problems[index] = "not valid Unicode (a lone surrogate code point)"
                continue
            ids = processor.query_prompt_ids(query, prompt)
            length = len(ids)
            if length <= limit:
                prompt_ids[index] = ids
                continue
            if not truncate:
                problems[index] = (
                    f"{length} prompt tokens, more than max_query_length={limit} (pass truncate=True to cut it)"
                )
                continue
            cut = processor.truncate_query(query, limit, prompt)
            prompt_ids[index] = processor.query_prompt_ids(cut, prompt)
            logger.warning(
                "query %d is %d prompt tokens, more than max_query_length=%d: cut from %d to %d characters",
                index, length, limit, len(query), len(cut),
            )  # fmt: skip
        return prompt_ids, problems

    def _query_inputs(self, prompt_ids: list[list[int]], processor) -> dict:
        """Left-padded batch of prompt ids from `_check_queries`, on the model's device."""
        inputs = processor.pad_prompts(prompt_ids)
        return {
            "input_ids": inputs["input_ids"].to(self.device),  # (batch, prompt)
            "attention_mask": inputs["attention_mask"].to(self.device),  # (batch, prompt)
        }

    def _decode_hits(self, inputs, k, num_beams, scoring, index) -> list[list[dict]]:
        """Identifier beam search of `modeling.decoding`; similarity from the states written while decoding."""
        output = sigma_beam_search(
            self.backbone,
            inputs["input_ids"],
            inputs["attention_mask"],
            index.trie.children_tables(),
            self.config.identifier_token_offsets,
            num_beams,
            scoring=scoring,
            eos_token_id=self.config.eos_token_id,
            length_penalty=_length_penalty(self.backbone.generation_config),
            cache_name=CACHE_NAME,
        )
        batch, length = output.codes.shape[0], self.config.layout.length
        similarity = self.similarity_head(output.pooled[:, :k]).float().cpu()  # (batch, k)
        codes, scores, valid = (
            output.codes[:, :k].cpu(),
            output.scores[:, :k].cpu(),
            output.valid[:, :k].cpu(),
        )
        rows = index.lookup(codes.reshape(-1, length)).view(batch, k).masked_fill(~valid, -1)  # (batch, k)
        return [self._format_hits(index, codes[i], rows[i], scores[i], similarity[i]) for i in range(batch)]

    def _generate_hits(self, inputs, k, num_beams, scoring, index) -> list[list[dict]]:
        """transformers' beam search with `SigmaTrieLogitsProcessor`, then a forward for the similarity head."""
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        queries = range(input_ids.shape[0])
        beams = {"num_beams": num_beams, "num_return_sequences": num_beams}
        output = self.generate(
            **inputs, **beams, output_scores=True, return_dict_in_generate=True, index=index
        )
        length, prompt_length = self.config.layout.length, input_ids.shape[1]
        sequences = output.sequences.view(len(queries), num_beams, -1)[:, :k]  # (batch, k, total)
        scores = output.sequences_scores.view(len(queries), num_beams)[:, :k]  # (batch, k)
        offsets = torch.tensor(self.config.identifier_token_offsets, device=sequences.device)
        codes = (sequences[..., prompt_length : prompt_length + length] - offsets).cpu()  # (batch, k, length)
        rows = index.lookup(codes.reshape(-1, length)).view(len(queries), k)  # (batch, k)
        similarity = self._score_sequences(sequences, attention_mask, prompt_length + length)  # (batch, k)
        hits = [
            self._format_hits(index, codes[i], rows[i], scores[i], similarity[i]) for i in range(len(queries))
        ]
        return hits

    def _score_sequences(self, sequences, prompt_mask, end: int) -> torch.Tensor:
        """Similarity head on `query + identifier` for every returned beam."""
        batch, k, _ = sequences.shape
        flat = sequences[..., :end].reshape(batch * k, end)  # (batch * k, end)
        mask = torch.cat(
            [prompt_mask, torch.ones_like(prompt_mask[:, :1]).expand(-1, end - prompt_mask.shape[1])], 1
        )
        mask = mask.repeat_interleave(k, dim=0)  # (batch * k, end)
        return self(input_ids=flat, attention_mask=mask).similarity.view(batch, k).float().cpu()

    def _format_hits(self, index, codes, rows, scores, similarity) -> list[dict]:
        layout = self.config.layout
        return [
            {
                "image_id": index.image_ids[int(row)],
                "identifier": layout.codes_to_string(code.tolist()),
                "score": float(score),
                "similarity": float(sim),
            }
            for code, row, score, sim in zip(codes, rows, scores, similarity)
            if int(row) >= 0
        ]


def _length_penalty(generation_config) -> float:
    """The length penalty `generate` applies to beam scores (1.0 when the generation config leaves it unset)."""
    value = getattr(generation_config, "length_penalty", None)
    return 1.0 if value is None else float(value)


SigmaForRetrieval.register_for_auto_class("AutoModel")

__all__ = [
    "SigmaForRetrieval",
    "SigmaPreTrainedModel",
    "SigmaRetrievalOutput",
    "SigmaSimilarityHead",
    "label_targets",
]
