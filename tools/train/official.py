"""Builds the OFFICIAL ReferDINO network and criterion from a small configuration.

The official modules are imported from an extracted copy of github.com/iSEE-Laboratory/ReferDINO named
by the environment variable REFERDINO_SRC (never committed here) and driven as they are. The only
interventions, all at construction time, are:

* Swin sizes: the official ``build_swin_transformer`` lets keyword arguments override its size table;
  ``tiny_overrides.swin`` is passed that way (plus ``use_checkpoint=False``: activation
  checkpointing only trades time for memory, the weights are the same);
* BERT: ``get_pretrained_language_model`` returns a randomly initialised ``BertModel`` of the
  ``tiny_overrides.bert`` sizes instead of downloading bert-base-uncased; the tokenizer is the real
  bert-base-uncased WordPiece vocabulary (``tests/fixtures/tokenizer/vocab.txt``);
* two feed-forward widths the official code hard-codes (the temporal decoder's
  ``nn.TransformerDecoderLayer`` default 2048 and the mask decoder's ``d_ffn`` default 1024) are
  set from ``tiny_overrides``;
* when ``hidden_dim != 256``, the two sine-embedding widths hard-coded for 256 (128 features per box
  coordinate, 256 for text positions) are expressed as ``hidden_dim // 2`` and ``hidden_dim`` by
  calling the official ``get_sine_pos_embed`` with those widths.

These are the same interventions as the project's golden-fixture harness, so the runtime's
configuration reader (``tiny_overrides`` in config.json) describes the result exactly.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
VOCAB = REPO / "tests" / "fixtures" / "tokenizer" / "vocab.txt"


def referdino_src() -> Path:
    src = os.environ.get("REFERDINO_SRC")
    if not src:
        raise SystemExit("REFERDINO_SRC is not set: point it at an extracted copy of "
                         "github.com/iSEE-Laboratory/ReferDINO (see tools/train/README.md)")
    src = Path(src).resolve()
    if not (src / "models" / "GroundingDINO" / "groundingdino.py").is_file():
        raise SystemExit(f"REFERDINO_SRC={src} does not look like the ReferDINO repository")
    return src


_OFF = {}


def official():
    """The official modules (imported once)."""
    if _OFF:
        return _OFF
    src = str(referdino_src())
    if src not in sys.path:
        sys.path.insert(0, src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from models import build_model
        import models.GroundingDINO.groundingdino as gd
        import models.GroundingDINO.transformer as tr
        import models.GroundingDINO.utils as gutils
        import models.GroundingDINO.backbone.backbone as bb
        import models.dino_util.get_tokenlizer as gtok
        import misc
    _OFF.update(build_model=build_model, gd=gd, tr=tr, gutils=gutils, bb=bb, gtok=gtok, misc=misc)
    return _OFF


_TOKDIR = None


def tokenizer_dir() -> str:
    """A folder AutoTokenizer reads offline: the bert-base-uncased vocabulary, lower-casing."""
    global _TOKDIR
    if _TOKDIR is None:
        d = Path(tempfile.mkdtemp(prefix="referdino-train-tok-"))
        (d / "vocab.txt").write_bytes(VOCAB.read_bytes())
        (d / "tokenizer_config.json").write_text(json.dumps(
            {"do_lower_case": True, "model_max_length": 512, "tokenizer_class": "BertTokenizer"}))
        (d / "special_tokens_map.json").write_text(json.dumps(
            {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
             "cls_token": "[CLS]", "mask_token": "[MASK]"}))
        _TOKDIR = str(d)
    return _TOKDIR


@contextlib.contextmanager
def patches(cfg: dict):
    off = official()
    gd, tr, gutils, bb, gtok = off["gd"], off["tr"], off["gutils"], off["bb"], off["gtok"]
    tiny = cfg["tiny_overrides"]
    hidden = cfg["GroundingDINO"]["hidden_dim"]
    saved = []

    def put(obj, name, value):
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    build_swin = bb.build_swin_transformer
    swin_kw = dict(tiny["swin"])

    def small_swin(modelname, pretrain_img_size, **kw):
        kw.update(swin_kw)
        kw["use_checkpoint"] = False
        return build_swin(modelname, pretrain_img_size, **kw)
    put(bb, "build_swin_transformer", small_swin)

    from transformers import BertConfig, BertModel
    bert_cfg = dict(tiny["bert"])
    put(gtok, "get_pretrained_language_model", lambda _name: BertModel(BertConfig(**bert_cfg)))

    if tiny.get("temporal_dim_feedforward", 2048) != 2048:
        put(torch.nn, "TransformerDecoderLayer",
            functools.partial(torch.nn.TransformerDecoderLayer,
                              dim_feedforward=tiny["temporal_dim_feedforward"]))
    if tiny.get("mask_decoder_d_ffn", 1024) != 1024:
        put(gd, "DeformableTransformerDecoderLayer",
            functools.partial(tr.DeformableTransformerDecoderLayer, d_ffn=tiny["mask_decoder_d_ffn"]))
    if hidden != 256:
        sine = gutils.get_sine_pos_embed

        def box_sine(pos):
            return sine(pos, num_pos_feats=hidden // 2, temperature=10000, exchange_xy=True)

        def text_sine(pos, num_pos_feats=128, temperature=10000, exchange_xy=True):
            if num_pos_feats == 256:
                num_pos_feats = hidden
            return sine(pos, num_pos_feats=num_pos_feats, temperature=temperature,
                        exchange_xy=exchange_xy)
        put(tr, "gen_sineembed_for_position", box_sine)
        put(gd, "gen_sineembed_for_position", box_sine)
        put(tr, "get_sine_pos_embed", text_sine)
    try:
        yield off
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def build(cfg: dict):
    """(model, criterion) of the official code for ``cfg`` (a flattened official config with
    ``tiny_overrides``), randomly initialised by the official constructors."""
    from easydict import EasyDict
    args = copy.deepcopy(cfg)
    args.pop("tiny_overrides")
    args.pop("trainer", None)
    args["GroundingDINO"]["text_encoder_type"] = tokenizer_dir()
    empty = Path(tempfile.mkdtemp(prefix="referdino-train-empty-")) / "empty.pth"
    torch.save({"model": {}}, empty)
    args["GroundingDINO"]["pretrained_path"] = str(empty)
    args = EasyDict(args)
    with patches(cfg) as off:
        with contextlib.redirect_stdout(open(os.devnull, "w")), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, criterion, _post = off["build_model"](args)
    return model, criterion
