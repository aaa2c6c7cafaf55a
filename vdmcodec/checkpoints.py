"""Checkpoint files: config, EMA weights (half precision), the coding schedule and metadata.

The file loads with torch.load(weights_only=True).  Its SHA-256 identifies the model in every
.vdmc header; the gamma table at the coding T is stored in float64 so that the coder never
recomputes it (a different CPU could round the schedule network differently).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError
from .files import atomic_write_bytes
from .model.vdm import VDM, VDMConfig

FORMAT_NAME = "vdmcodec-checkpoint"
FORMAT_VERSION = 1
PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT_NAME = "default.pt"


def checkpoint_dirs() -> list[Path]:
    """Where shipped checkpoints are looked for: the source tree, then an installed copy.
    pip puts the data files under the install's prefix (share/vdmcodec/checkpoints), and the
    package sits a few folders below that prefix whichever way it was installed (a venv,
    --user, --prefix, --target), so the package's own ancestors are tried, then sys.prefix."""
    dirs = [PACKAGE_DIR.parent / "checkpoints"]
    dirs += [p / "share" / "vdmcodec" / "checkpoints" for p in list(PACKAGE_DIR.parents)[:5]]
    dirs.append(Path(sys.prefix) / "share" / "vdmcodec" / "checkpoints")
    return list(dict.fromkeys(dirs))


@dataclass
class LoadedModel:
    model: VDM
    gamma_table: torch.Tensor  # float64, T + 1 values
    model_id: str
    sha256: str
    path: Path
    meta: dict
    # the eps and context networks in exact arithmetic (model.exact_context.ExactModel), for
    # files that open on any machine; None for a model without them
    exact: object | None = None


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_sha256(config: dict, state: dict, gamma_table: torch.Tensor, exact: dict | None = None) -> str:
    """Hash of what the coder uses: torch.load does not check the archive's CRCs, so a
    damaged tensor would otherwise load silently as a different model."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    h.update(gamma_table.to(torch.float64).contiguous().numpy().tobytes())
    if exact is not None:
        _hash_tree(h, exact)
    return h.hexdigest()


def _hash_tree(h, obj, key: str = "exact") -> None:
    """Every leaf of a nested dict / list of tensors and plain values, in a fixed order."""
    h.update(key.encode())
    if isinstance(obj, dict):
        for k in sorted(obj):
            _hash_tree(h, obj[k], f"{key}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _hash_tree(h, v, f"{key}[{i}]")
    elif isinstance(obj, torch.Tensor):
        h.update(str(obj.dtype).encode())
        h.update(obj.detach().cpu().contiguous().numpy().tobytes())
    else:
        h.update(repr(obj).encode())


# weights stored in float16: both networks' (the context network's since session 12: a
# model written before keeps its float32 context as it was); the few schedule and decoder
# scalars and the linear context stay float32
HALF_PREFIXES = ("net.", "context_net.")


def half_state_dict(model: VDM) -> dict:
    """Network weights in float16, the rest float32."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        out[k] = v.half() if k.startswith(HALF_PREFIXES) and v.is_floating_point() else v.float()
    return out


def save_torch_atomic(obj, path: str | os.PathLike) -> None:
    """torch.save, all or nothing (a training run killed mid-save keeps its last state)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue(), overwrite=True)


def save_checkpoint(path: str | os.PathLike, model: VDM, model_id: str, meta: dict,
                    earlier: list[dict] | None = None, exact: dict | None = None) -> str:
    """Write atomically; returns the file's SHA-256.  Weights are rounded to float16 first,
    and the gamma table is computed from exactly the stored weights.  earlier: models that
    files may still name (earlier_models), kept as their differences from this one where
    those are small, so that their files keep decoding with this checkpoint alone.  exact:
    ExactModel.state() of the same model, for exact coding."""
    state = half_state_dict(model)
    probe = VDM(model.cfg)
    probe.load_state_dict({k: v.float() for k, v in state.items()})
    table = probe.schedule.table(model.cfg.steps)
    if exact is not None:  # the tables must fit the weights as stored, or the file would not load
        from .model.exact_context import ExactModel
        try:
            ExactModel.from_state(exact, probe)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"exact tables do not fit {model_id}'s stored weights ({exc})") from None
    config = model.cfg.to_dict()
    table = table.to(torch.float64)
    blob = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model_id": model_id,
        "config": config,
        "state_dict": state,
        "gamma_table": table,
        "content_sha256": content_sha256(config, state, table, exact),
        "meta": meta,
    }
    if exact is not None:
        blob["exact"] = exact
    kept = [e for e in (_as_difference(m, state, exact) for m in earlier or []) if e is not None]
    if kept:
        blob["earlier"] = kept
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # through a buffer: saving to a path names the archive's records after the file, and
    # the file's SHA-256 is the model's identity
    save_torch_atomic(blob, path)
    return file_sha256(path)


# an earlier model is kept only if it differs by at most this much: a retrained context
# network (s12 carries s11's, 0.73 MB), never a retrained big network (2.6 MB)
EARLIER_MAX_BYTES = 1 << 20


def _as_difference(full: dict, state: dict, exact: dict | None = None) -> dict | None:
    """An earlier model (config, state_dict, gamma_table, ids, exact tables) as the tensors
    in which it differs from `state`, and the parts of its exact tables that differ from
    `exact` (the big network's tables, 0.9 MB, are the same when only the context changed);
    None if that is too much to carry."""
    old = full["state_dict"]
    diff = {k: v for k, v in old.items() if k not in state or state[k].dtype != v.dtype or not torch.equal(state[k], v)}
    if sum(v.numel() * v.element_size() for v in diff.values()) > EARLIER_MAX_BYTES:
        return None
    entry = {"model_id": full["model_id"], "sha256": full["sha256"], "content_sha256": full["content_sha256"],
             "config": full["config"], "keys": sorted(old), "state_dict": diff, "gamma_table": full["gamma_table"]}
    if full.get("exact") is not None:  # its exact tables (scales, no weights: a few hundred kB)
        same = sorted(k for k in full["exact"] if exact is not None and k in exact
                      and _tree_sha256(full["exact"][k]) == _tree_sha256(exact[k]))
        entry["exact"] = {k: v for k, v in full["exact"].items() if k not in same}
        if same:
            entry["exact_same"] = same
    return entry


def _tree_sha256(obj) -> str:
    h = hashlib.sha256()
    _hash_tree(h, obj, key="")
    return h.hexdigest()


def _from_difference(entry: dict, state: dict) -> dict:
    """The earlier model's whole state from its difference entry and this checkpoint's state."""
    return {k: entry["state_dict"][k] if k in entry["state_dict"] else state[k] for k in entry["keys"]}


def _exact_from_difference(entry: dict, exact: dict | None) -> dict | None:
    """The earlier model's exact tables: its own parts and those it shares with this checkpoint."""
    if entry.get("exact") is None:
        return None
    return dict(entry["exact"], **{k: exact[k] for k in entry.get("exact_same", [])})


def earlier_models(path: str | os.PathLike) -> list[dict]:
    """A checkpoint and the earlier models it carries, each whole (config, state_dict,
    gamma_table, model_id, sha256, content_sha256): what a checkpoint made from it passes to
    save_checkpoint(earlier=...)."""
    blob = read_checkpoint(path)
    own = {k: blob[k] for k in ("config", "state_dict", "gamma_table", "model_id", "content_sha256")}
    own["exact"] = blob.get("exact")
    out = [dict(own, sha256=file_sha256(path))]
    for e in blob.get("earlier", []):
        whole = dict(e, state_dict=_from_difference(e, blob["state_dict"]),
                     exact=_exact_from_difference(e, blob.get("exact")))
        whole.pop("exact_same", None)
        out.append(whole)
    return out


def load_earlier(path: str | os.PathLike, sha256: str, device: str = "cpu") -> LoadedModel | None:
    """The earlier model with file hash `sha256` that the checkpoint at `path` carries, checked
    against that model's own content hash; None if it carries no such model."""
    blob = read_checkpoint(path)
    for e in blob.get("earlier", []):
        if e.get("sha256") != sha256:
            continue
        state = _from_difference(e, blob["state_dict"])
        exact = _exact_from_difference(e, blob.get("exact"))
        if content_sha256(e["config"], state, e["gamma_table"], exact) != e["content_sha256"]:
            raise CheckpointError(f"checkpoint {path} is damaged: its copy of model {e['model_id']} does not match its hash")
        return _with_exact(_build(path, e["config"], state, e["gamma_table"], e["model_id"], sha256, {}, device),
                           exact, path)
    return None


def default_checkpoint_path() -> Path:
    env = os.environ.get("VDMCODEC_CHECKPOINT")
    if env:
        return Path(env)
    for d in checkpoint_dirs():
        if (d / DEFAULT_CHECKPOINT_NAME).exists():
            return d / DEFAULT_CHECKPOINT_NAME
    return checkpoint_dirs()[0] / DEFAULT_CHECKPOINT_NAME


def resolve_checkpoint(spec: str | os.PathLike | None) -> Path:
    """A path, a file name in the checkpoint folder, or None for the default."""
    if spec is None:
        return default_checkpoint_path()
    p = Path(spec)
    if p.exists():
        return p
    for d in checkpoint_dirs():
        for cand in (d / str(spec), d / f"{spec}.pt"):
            if cand.exists():
                return cand
    raise CheckpointError(f"checkpoint not found: {spec}")


def read_checkpoint(path: str | os.PathLike) -> dict:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # torch raises many kinds for a bad file
        raise CheckpointError(f"not a readable checkpoint: {path} ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT_NAME:
        raise CheckpointError(f"not a vdmcodec checkpoint: {path}")
    if blob.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"unsupported checkpoint version {blob.get('version')}: {path}")
    return blob


def load_checkpoint(spec: str | os.PathLike | None = None, device: str = "cpu") -> LoadedModel:
    path = resolve_checkpoint(spec)
    blob = read_checkpoint(path)
    want = blob.get("content_sha256")
    if want is None or want != content_sha256(blob["config"], blob["state_dict"], blob["gamma_table"], blob.get("exact")):
        raise CheckpointError(f"checkpoint {path} is damaged: its weights do not match their hash")
    loaded = _build(path, blob["config"], blob["state_dict"], blob["gamma_table"], blob["model_id"],
                    file_sha256(path), blob.get("meta", {}), device)
    return _with_exact(loaded, blob.get("exact"), path)


def _with_exact(loaded: LoadedModel, exact: dict | None, path) -> LoadedModel:
    """The model with its exact-arithmetic tables, if the checkpoint has them."""
    if exact is not None:
        from .model.exact_context import ExactModel
        try:
            loaded.exact = ExactModel.from_state(exact, loaded.model)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: unreadable exact tables ({type(exc).__name__}: {exc})") from None
    return loaded


def _build(path, config: dict, state: dict, gamma_table: torch.Tensor, model_id: str, sha256: str, meta: dict,
           device: str) -> LoadedModel:
    try:
        cfg = VDMConfig.from_dict(config)
        model = VDM(cfg)
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match its config ({type(exc).__name__}: {str(exc)[:200]})") from None
    model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model=model, gamma_table=gamma_table.to(torch.float64), model_id=str(model_id), sha256=sha256,
                       path=Path(path), meta=dict(meta))
