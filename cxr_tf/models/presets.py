"""Presets: a trained classifier as a self-describing folder, and the one loader that finds it.

A preset (keras-hub's ``preset_utils`` layout, torchxrayvision's idea that weights travel
with their labels, resolution and operating thresholds) is a folder::

    NAME/
      config.json        format marker, the CXRClassifier config (backbone, input size, head,
                         classes), the input convention and the weights file with its dtype
      model.weights.h5   Keras weights of the whole classifier (kernels may be float16)
      metadata.json      :class:`PresetMetadata`: classes, resolution, thresholds, calibration,
                         training data by source (counts, licences), metrics with CIs on named
                         held-out sets, sha256 of the weights, the command and commit
      MODEL_CARD.md      written from metadata.json by :func:`model_card`

:func:`load_preset` resolves ``NAME`` (or ``preset:NAME``) in this order: a local folder,
the user cache (``$CXR_TF_HOME/presets/NAME``, default ``~/.cache/cxr_tf/presets``), the
presets embedded in the package (``cxr_tf/presets/NAME``), then a remote preset registered
with a URL and sha256 (``cxr_tf/presets/remote.json`` or :func:`register_remote_preset`),
downloaded once into the cache. ``https://host/x.tar.gz#sha256=HEX`` names an archive
directly. Downloads are atomic: a checksum mismatch raises :class:`CXRChecksumError` and
leaves nothing in the cache.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from cxr_tf.errors import (
    CXRArchitectureError,
    CXRChecksumError,
    CXRConfigError,
    CXRPresetNotFoundError,
    CXRWeightsError,
)

PREFIX = "preset:"
FORMAT = "cxr_tf.preset"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.weights.h5"
CARD_FILE = "MODEL_CARD.md"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")

#: Licences of the public sources in ``$CXR_DATA_DIR`` (its README), so a preset saved from a
#: run states them; an unknown source says so instead of guessing.
KNOWN_LICENCES = {
    "kermany224": "CC BY 4.0 (Kermany et al. 2018, Mendeley 10.17632/rscbjbr9sj)",
    "kermany_originals": "CC BY 4.0 (Kermany et al. 2018, Mendeley 10.17632/rscbjbr9sj)",
    "pneumoniamnist": "CC BY 4.0 (MedMNIST v2)",
    "covid19_radiography": "Kaggle terms; cite Chowdhury et al. 2020, Rahman et al. 2021",
    "covid_ieee8023": "per image, mostly CC BY-NC-SA 4.0 / CC BY 3.0 (Cohen et al.)",
    "nih_chestxray14": "NIH: unrestricted use, cite Wang et al. 2017",
    "nih1000_64": "NIH: unrestricted use, cite Wang et al. 2017",
}

DEFAULT_INTENDED_USE = (
    "Research and teaching on chest radiographs: a starting point for fine-tuning and a baseline "
    "to compare against. NOT FOR CLINICAL USE: not a medical device, not validated on any "
    "clinical population, not to be used for diagnosis or triage."
)


# ----------------------------------------------------------------------------- metadata
@dataclasses.dataclass
class PresetMetadata:
    """What a preset says about itself (``metadata.json``).

    Attributes:
        name: the preset's name.
        description: one line.
        class_names: output order of the classifier.
        image_size: input side in pixels.
        thresholds: operating threshold per positive class, chosen on validation data
            (binary: ``{class_names[1]: t}``; multi-label: one per class).
        calibration: how probabilities were calibrated, if at all (e.g.
            ``{"method": "temperature", "T": 1.3, "fit_on": "val"}``).
        training_data: one entry per source: ``{"source", "images", "licence"}`` (plus
            anything else, e.g. ``"split"``, ``"classes"``).
        metrics: held-out set name -> metric name -> ``{"value": v, "ci95": [lo, hi]}``.
        intended_use: shown first in the model card.
        limitations: known failure modes and shortcuts.
        command, git_commit: what produced the weights.
        weights_sha256, weights_dtype: filled by :func:`save_preset`.
        created_utc, cxr_tf_version: filled by :func:`save_preset`.
        extra: anything else (kept through a round trip).
    """

    name: str
    description: str = ""
    class_names: list = dataclasses.field(default_factory=list)
    image_size: int = 0
    thresholds: dict = dataclasses.field(default_factory=dict)
    calibration: dict | None = None
    training_data: list = dataclasses.field(default_factory=list)
    metrics: dict = dataclasses.field(default_factory=dict)
    intended_use: str = DEFAULT_INTENDED_USE
    limitations: list = dataclasses.field(default_factory=list)
    command: str = ""
    git_commit: str = ""
    weights_sha256: str = ""
    weights_dtype: str = "float32"
    created_utc: str = ""
    cxr_tf_version: str = ""
    extra: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PresetMetadata":
        if not isinstance(d, dict) or "name" not in d:
            raise CXRConfigError(f"preset metadata must be a mapping with a 'name'; received {d!r:.200}")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = dict(d.get("extra") or {})
        extra.update({k: v for k, v in d.items() if k not in known})  # a newer writer's keys survive
        return cls(**{k: v for k, v in d.items() if k in known and k != "extra"}, extra=extra)

    def validate(self) -> None:
        """Raise :class:`CXRConfigError` on values a model card or ``predict`` would misuse."""
        if not _NAME_RE.match(self.name or ""):
            raise CXRConfigError(f"preset name must be letters, digits, '_', '-', '.'; received {self.name!r}")
        for c, t in self.thresholds.items():
            if c not in self.class_names:
                raise CXRConfigError(f"threshold for {c!r}, which is not one of the classes {self.class_names}")
            if not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
                raise CXRConfigError(f"threshold for {c!r} must be a number in [0, 1]; received {t!r}")
        for i, src in enumerate(self.training_data):
            missing = [k for k in ("source", "images", "licence") if not isinstance(src, dict) or k not in src]
            if missing:
                raise CXRConfigError(f"training_data[{i}] lacks {missing}: each source states its name, image "
                                     "count and licence")
            if not isinstance(src["images"], int) or src["images"] < 0:
                raise CXRConfigError(f"training_data[{i}]['images'] must be a count; received {src['images']!r}")
        for set_name, ms in self.metrics.items():
            if not isinstance(ms, dict):
                raise CXRConfigError(f"metrics[{set_name!r}] must map metric names to values")
            for m, v in ms.items():
                val = v.get("value") if isinstance(v, dict) else v
                if val is not None and not isinstance(val, (int, float)):
                    raise CXRConfigError(f"metrics[{set_name!r}][{m!r}] is not a number: {v!r}")
                ci = v.get("ci95") if isinstance(v, dict) else None
                if ci is not None and (len(ci) != 2 or (val is not None and not ci[0] <= val <= ci[1])):
                    raise CXRConfigError(f"metrics[{set_name!r}][{m!r}]: ci95 {ci} must be [lo, hi] around {val}")


def _fmt(v) -> str:
    return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def model_card(meta: PresetMetadata, config: dict | None = None) -> str:
    """The MODEL_CARD.md text, written only from ``meta`` (and the config's architecture)
    by the project's one card writer (:mod:`cxr_tf.evaluation.model_card`)."""
    from cxr_tf.evaluation.model_card import render_card

    mc = dict((config or {}).get("model", {}))
    notes = []
    if "splits.csv" in (meta.extra.get("files") or []):
        notes.append("Which images it saw: `splits.csv` in this folder (item, patient, split). Do not "
                     "evaluate it on its train or val items.")
    notes.append("Written by cxr_tf.models.presets.model_card from metadata.json; edit the metadata, not this file.")
    return render_card({
        "title": meta.name, "description": meta.description or "(no description)",
        "class_names": list(meta.class_names), "intended_use": meta.intended_use,
        "config": {**mc, "image_size": meta.image_size},
        "data_sources": [{"name": d["source"], "images": d["images"], "licence": d["licence"]}
                         for d in meta.training_data],
        "metrics_sets": meta.metrics,
        "operating_points": {"rule": meta.extra.get("threshold_rule") or "validation (stated in the metadata)",
                             "thresholds": meta.thresholds}
        if meta.thresholds else None,
        "calibration": meta.calibration,
        "limitations": list(meta.limitations),
        "provenance": {"weights": f"{WEIGHTS_FILE} ({meta.weights_dtype})", "sha256": meta.weights_sha256,
                       "command": meta.command or "not recorded", "git_commit": meta.git_commit or "not recorded",
                       "created": meta.created_utc, "cxr_tf": meta.cxr_tf_version},
        "notes": notes,
    })


def presets_home() -> Path:
    """The user cache: ``$CXR_TF_HOME/presets`` (default ``~/.cache/cxr_tf/presets``)."""
    return Path(os.environ.get("CXR_TF_HOME") or "~/.cache/cxr_tf").expanduser() / "presets"


def embedded_dir() -> Path:
    """Presets shipped inside the package (``cxr_tf/presets/NAME/``)."""
    return Path(__file__).resolve().parents[1] / "presets"


_REMOTE: dict[str, tuple[str, str]] = {}


def register_remote_preset(name: str, url: str, sha256: str) -> None:
    """Make ``preset:NAME`` downloadable from ``url`` (a ``.tar.gz`` of the preset folder)."""
    if not _NAME_RE.match(name or ""):
        raise CXRConfigError(f"preset name must be letters, digits, '_', '-', '.'; received {name!r}")
    if not _SHA_RE.match((sha256 or "").lower()):
        raise CXRConfigError(f"sha256 must be 64 hex digits; received {sha256!r}")
    _REMOTE[name] = (url, sha256.lower())


def remote_presets() -> dict[str, tuple[str, str]]:
    """Registered remote presets: the package's ``remote.json`` plus :func:`register_remote_preset`."""
    out = {}
    index = embedded_dir() / "remote.json"
    if index.is_file():
        for name, e in json.loads(index.read_text()).items():
            out[name] = (e["url"], e["sha256"].lower())
    out.update(_REMOTE)
    return out


def _preset_dirs(base: Path) -> list[str]:
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / CONFIG_FILE).is_file() and not p.name.startswith("."))


def list_presets() -> list[str]:
    """Names ``preset:NAME`` can load: cached, embedded and registered remote presets."""
    return sorted(set(_preset_dirs(presets_home())) | set(_preset_dirs(embedded_dir())) | set(remote_presets()))


def preset_table() -> list[dict]:
    """One row per name of :func:`list_presets` (first location in lookup order wins)."""
    rows = []
    cached, embedded, remote = set(_preset_dirs(presets_home())), set(_preset_dirs(embedded_dir())), remote_presets()
    for name in list_presets():
        if name in cached or name in embedded:
            base = presets_home() if name in cached else embedded_dir()
            try:
                p = read_preset(base / name, "cache" if name in cached else "embedded", verify=False)
            except CXRWeightsError as e:  # a broken folder is listed with its cause, not hidden
                rows.append({"name": name, "location": str(base / name), "status": f"unusable: {e}"})
                continue
            rows.append({"name": name, "location": p.source, "path": str(p.path), "backbone": p.backbone,
                         "image_size": p.image_size, "classes": p.class_names,
                         "description": p.metadata.description})
        else:
            rows.append({"name": name, "location": "remote (downloaded on first use)", "url": remote[name][0]})
    return rows


# ----------------------------------------------------------------------------- the preset object
@dataclasses.dataclass
class Preset:
    """A preset folder, read and checked. ``source``: folder, cache, embedded or download."""

    path: Path
    config: dict
    metadata: PresetMetadata
    source: str

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def model_config(self) -> dict:
        return dict(self.config["model"])

    @property
    def backbone(self) -> str:
        return self.config["model"]["backbone"]

    @property
    def image_size(self) -> int:
        return int(self.config["model"]["image_size"])

    @property
    def class_names(self) -> list[str]:
        return list(self.config["model"]["class_names"])

    @property
    def weights_path(self) -> Path:
        return self.path / self.config.get("weights", {}).get("file", WEIGHTS_FILE)

    def build(self, **overrides):
        """The preset's own classifier with all its weights (``overrides``: freeze_until, dropout, ...)."""
        from cxr_tf.models.classifier import CXRClassifier

        model = CXRClassifier.from_config({**self.model_config, **overrides})
        try:
            model.load_weights(str(self.weights_path))
        except Exception as e:  # noqa: BLE001 - h5 errors vary; name the preset and the cause
            raise CXRWeightsError(f"{self.weights_path}: cannot load preset {self.name!r} "
                                  f"({type(e).__name__}: {e})") from None
        model.preset = self
        model.weights_loaded = "full"
        return model


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_preset(path: str | os.PathLike, source: str = "folder", verify: bool = True) -> Preset:
    """Read and check a preset folder (``verify``: the weights' sha256 against the metadata)."""
    path = Path(path)
    cfg_file, meta_file = path / CONFIG_FILE, path / METADATA_FILE
    if not cfg_file.is_file() or not meta_file.is_file():
        raise CXRWeightsError(f"{path}: not a preset folder (needs {CONFIG_FILE} and {METADATA_FILE})")
    try:
        config = json.loads(cfg_file.read_text())
        meta = PresetMetadata.from_dict(json.loads(meta_file.read_text()))
    except (ValueError, CXRConfigError) as e:
        raise CXRWeightsError(f"{path}: unreadable preset ({e})") from None
    if config.get("format") != FORMAT or "model" not in config:
        raise CXRWeightsError(f"{cfg_file}: not a cxr_tf preset config (format {config.get('format')!r})")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise CXRWeightsError(f"{cfg_file}: preset format {config['format_version']} is newer than this cxr_tf "
                              f"reads ({FORMAT_VERSION}); upgrade cxr_tf")
    p = Preset(path=path, config=config, metadata=meta, source=source)
    if not p.weights_path.is_file():
        raise CXRWeightsError(f"{p.weights_path}: the preset's weights file is missing")
    if verify and meta.weights_sha256:
        got = sha256_file(p.weights_path)
        if got != meta.weights_sha256:
            raise CXRChecksumError(f"{p.weights_path}: sha256 {got} differs from the metadata's "
                                   f"{meta.weights_sha256} (corrupt or replaced file; delete the folder and "
                                   "fetch it again)")
    return p


def _available() -> str:
    names = list_presets()
    return ", ".join(names) if names else "none installed"


def load_preset(spec: str | os.PathLike) -> Preset:
    """Resolve ``NAME`` / ``preset:NAME`` / a folder / ``http(s)://...#sha256=HEX`` to a :class:`Preset`.

    Raises:
        CXRPresetNotFoundError: nothing by that name (the message lists what exists).
        CXRChecksumError: a download or a cached weights file has the wrong sha256.
        CXRWeightsError: the folder is not a usable preset, or a download failed.
    """
    s = os.fspath(spec)
    s = s[len(PREFIX):] if s.startswith(PREFIX) else s
    if s.startswith(("https://", "http://")):
        url, sha = _split_url(s)
        return _download(url, sha, presets_home() / f"url-{sha[:16]}")
    local = Path(s).expanduser()
    plain_name = bool(_NAME_RE.match(s)) and os.sep not in s and "/" not in s
    # A folder that holds a preset wins; a same-named unrelated folder in the working
    # directory must not hide the cached or embedded preset of that name.
    if local.is_dir() and ((local / CONFIG_FILE).is_file() or not plain_name):
        return read_preset(local, "folder")
    if not plain_name:
        raise CXRPresetNotFoundError(f"{s}: no such preset folder; installed presets: {_available()}")
    for base, source in ((presets_home(), "cache"), (embedded_dir(), "embedded")):
        if (base / s).is_dir():
            return read_preset(base / s, source)
    remote = remote_presets()
    if s in remote:
        url, sha = remote[s]
        return _download(url, sha, presets_home() / s)
    raise CXRPresetNotFoundError(f"unknown preset {s!r}; available: {_available()} "
                                 f"(looked in {presets_home()}, {embedded_dir()} and the remote index)")


# ----------------------------------------------------------------------------- download
def _split_url(s: str) -> tuple[str, str]:
    parsed = urllib.parse.urlsplit(s)
    m = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", parsed.fragment or "")
    if not m:
        raise CXRConfigError(f"{s}: a preset URL must end with #sha256=<64 hex digits> (downloads are checked)")
    return urllib.parse.urlunsplit(parsed._replace(fragment="")), m.group(1).lower()


def _safe_extract(archive: Path, dest: Path) -> Path:
    """Extract a preset archive into ``dest``; returns the folder holding ``config.json``."""
    with tarfile.open(archive, "r:*") as tar:
        for m in tar.getmembers():
            if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in Path(m.name).parts:
                raise CXRWeightsError(f"{archive.name}: refusing archive member {m.name!r} (links and paths "
                                      "outside the folder are not allowed)")
        try:
            tar.extractall(dest, filter="data")
        except TypeError:  # Python < 3.10.12 has no extraction filters; members were checked above
            tar.extractall(dest)
    if (dest / CONFIG_FILE).is_file():
        return dest
    subs = [p for p in dest.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file()]
    if len(subs) != 1:
        raise CXRWeightsError(f"{archive.name}: the archive holds no preset folder (no {CONFIG_FILE})")
    return subs[0]


def _download(url: str, sha256: str, dest: Path, timeout: float = 60.0) -> Preset:
    """Fetch ``url`` once into ``dest`` (atomic: temp file + checks + rename)."""
    if dest.is_dir():
        return read_preset(dest, "cache")
    home = dest.parent
    home.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=home)
    tmp, extract = Path(tmp_name), None
    try:
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
                for block in iter(lambda: r.read(1 << 20), b""):
                    h.update(block)
                    f.write(block)
        except (urllib.error.URLError, OSError) as e:
            raise CXRWeightsError(f"{url}: download failed ({type(e).__name__}: {e}); offline? Copy the preset "
                                  f"folder to {dest} instead") from None
        if h.hexdigest() != sha256:
            raise CXRChecksumError(f"{url}: sha256 {h.hexdigest()} but {sha256} was expected; "
                                   "nothing was cached")
        extract = Path(tempfile.mkdtemp(prefix=".extract-", dir=home))
        root = _safe_extract(tmp, extract)
        read_preset(root, "download")  # a broken archive never reaches the cache
        try:
            os.rename(root, dest)
        except OSError:
            if not dest.is_dir():  # another process won the race: use its copy
                raise
        return read_preset(dest, "cache")
    finally:
        tmp.unlink(missing_ok=True)
        if extract is not None:
            shutil.rmtree(extract, ignore_errors=True)


def pack_preset(folder: str | os.PathLike, archive: str | os.PathLike) -> str:
    """Write ``folder`` as a ``.tar.gz`` to publish; returns its sha256 (for the URL fragment)."""
    folder = Path(folder)
    read_preset(folder)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return sha256_file(archive)


# ----------------------------------------------------------------------------- writing
def _cast_kernels_float16(path: Path) -> None:
    """Store kernels (arrays of rank >= 2) as float16 in a Keras ``.weights.h5`` file.

    Kernels hold nearly all the bytes; biases and BatchNorm statistics stay float32
    (a moving variance near 1e-5 loses its digits in float16, and they are tiny).
    Keras casts to the variable's float32 dtype on load.
    """
    import h5py

    def copy(src, dst):
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        for key, obj in src.items():
            if isinstance(obj, h5py.Group):
                copy(obj, dst.create_group(key))
                continue
            data = obj[()]
            if obj.dtype.kind == "f" and obj.ndim >= 2 and obj.dtype.itemsize > 2:
                data = data.astype("float16")
            ds = dst.create_dataset(key, data=data)
            for k, v in obj.attrs.items():
                ds.attrs[k] = v

    # A fresh file (not an in-place edit): h5py would keep the freed float32 space.
    from cxr_tf.io.atomic import atomic_path

    with atomic_path(path) as tmp, h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
        copy(src, dst)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cxr_tf_version() -> str:
    try:
        from importlib.metadata import version

        return version("cxr_tf")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "source"


def save_preset(model, directory: str | os.PathLike, metadata: PresetMetadata | dict | None = None, *,
                weights_dtype: str = "float16", overwrite: bool = False,
                extra_files: dict | None = None) -> Path:
    """Write ``model`` (a :class:`CXRClassifier`) as a preset folder.

    Args:
        model: the trained classifier.
        directory: the preset folder to create; its name is the default preset name.
        metadata: a :class:`PresetMetadata` or dict; class names and resolution are taken
            from the model (a disagreeing value is an error), the weights' sha256, dtype,
            date, version and (when not given) commit and command are filled in.
        weights_dtype: ``float16`` (kernels stored in half precision: half the size) or ``float32``.
        overwrite: replace an existing folder.
        extra_files: ``{name in the preset: source path}`` copied in, e.g. the run's
            ``splits.csv`` (which images the preset trained, validated and was tested on).

    Returns:
        The folder. It is written under a temporary name and renamed when complete.
    """
    from cxr_tf.models.classifier import CXRClassifier

    if not isinstance(model, CXRClassifier):
        raise CXRConfigError(f"save_preset needs a CXRClassifier; received {type(model).__name__}")
    if weights_dtype not in ("float16", "float32"):
        raise CXRConfigError(f"weights_dtype must be float16 or float32; received {weights_dtype!r}")
    directory = Path(directory)
    if isinstance(metadata, PresetMetadata):
        meta = PresetMetadata.from_dict(metadata.to_dict())
    else:
        meta = PresetMetadata.from_dict({"name": directory.name, **(metadata or {})})
    if meta.class_names and list(meta.class_names) != list(model.class_names):
        raise CXRConfigError(f"metadata class_names {meta.class_names} differ from the model's {model.class_names}")
    if meta.image_size and int(meta.image_size) != model.image_size:
        raise CXRConfigError(f"metadata image_size {meta.image_size} differs from the model's {model.image_size}")
    meta.class_names, meta.image_size = list(model.class_names), int(model.image_size)
    meta.validate()
    if directory.exists() and not overwrite:
        raise CXRConfigError(f"{directory}: exists; pass overwrite=True (--overwrite) to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        weights = tmp / WEIGHTS_FILE
        model.save_weights(str(weights))
        if weights_dtype == "float16":
            _cast_kernels_float16(weights)
        meta.weights_sha256, meta.weights_dtype = sha256_file(weights), weights_dtype
        for fname, src_path in (extra_files or {}).items():
            if fname in (CONFIG_FILE, METADATA_FILE, CARD_FILE, WEIGHTS_FILE) or "/" in fname or os.sep in fname:
                raise CXRConfigError(f"extra file name {fname!r} is reserved or not a plain file name")
            shutil.copyfile(src_path, tmp / fname)
        if extra_files:
            meta.extra["files"] = sorted(extra_files)
        meta.created_utc = meta.created_utc or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta.cxr_tf_version = meta.cxr_tf_version or _cxr_tf_version()
        meta.git_commit = meta.git_commit or _git_commit()
        meta.command = meta.command or " ".join(sys.argv)
        model_cfg = {**model.get_config(), "weights": None}  # never re-download on load
        from cxr_tf.models.registry import get_backbone

        config = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "class": "cxr_tf.models.CXRClassifier",
            "model": model_cfg,
            "input": {"image_size": model.image_size, "channels": 1, "range": [0.0, 1.0],
                      "convention": "gray, per-image min-max scaled, resize_with_pad (cxr_tf.data.preprocess)",
                      "backbone_input_mode": get_backbone(model.backbone).input_mode},
            "weights": {"file": WEIGHTS_FILE, "dtype": weights_dtype},
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / METADATA_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
        (tmp / CARD_FILE).write_text(model_card(meta, config))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a preset is read by whoever installs it
        if directory.exists():
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


# ----------------------------------------------------------------------------- into a classifier
def load_preset_into(model, preset: Preset) -> str:
    """Copy a preset's weights into ``model`` (a freshly built :class:`CXRClassifier`).

    Returns ``"full"`` when the head matches too (same head, classes, multi-label setting)
    and was copied, else ``"trunk"`` (backbone layers only; the head stays newly initialised).

    Raises:
        CXRArchitectureError: the preset was trained on another backbone.
    """
    from cxr_tf.models.weights import copy_weights_by_name

    if preset.backbone != model.backbone:
        raise CXRArchitectureError(
            f"preset {preset.name!r} ({preset.path}) holds a {preset.backbone!r} backbone; this model is "
            f"{model.backbone!r}. Build it with backbone={preset.backbone!r} or choose another preset.")
    src = preset.build()
    mc = preset.model_config
    same_head = (mc.get("head") == model.head and mc.get("class_names") == model.class_names
                 and bool(mc.get("multilabel")) == bool(model.multilabel))
    layers = model.layers if same_head else [model.get_layer(n) for n in model.backbone_layer_names]
    copy_weights_by_name(layers, src, source=f"preset {preset.name}")
    return "full" if same_head else "trunk"


def classifier_from_preset(preset, num_classes: int | None = None, class_names=None, **kwargs):
    """See :meth:`CXRClassifier.from_preset`."""
    from cxr_tf.models.classifier import CXRClassifier

    p = preset if isinstance(preset, Preset) else load_preset(preset)
    if class_names is not None and num_classes is None:
        num_classes = len(class_names)
    if "backbone" in kwargs and kwargs["backbone"] != p.backbone:
        raise CXRArchitectureError(f"preset {p.name!r} holds a {p.backbone!r} backbone, not {kwargs['backbone']!r}")
    kwargs.pop("backbone", None)
    kwargs.pop("weights", None)
    mc = p.model_config
    arch_keys = ("image_size", "head", "multilabel")
    own = ((num_classes is None or num_classes == len(p.class_names))
           and (class_names is None or list(class_names) == p.class_names)
           and all(k not in kwargs or kwargs[k] == mc.get(k) for k in arch_keys))
    if own:
        return p.build(**{k: v for k, v in kwargs.items() if k not in arch_keys})
    kwargs.setdefault("freeze_until", mc.get("freeze_until", 0))
    kwargs.setdefault("image_size", p.image_size)
    kwargs.setdefault("head", mc.get("head", "gap"))
    model = CXRClassifier(backbone=p.backbone, num_classes=num_classes or len(p.class_names),
                          class_names=class_names, weights=f"{PREFIX}{p.path}", **kwargs)
    return model


# ----------------------------------------------------------------------------- from a run folder
def _stat(v) -> dict | None:
    """A metrics.json statistic -> ``{"value", "ci95"}`` (Wilson CI for proportions, bootstrap for AUC)."""
    if not isinstance(v, dict) or v.get("value") is None:
        return None
    ci = v.get("wilson_ci") or v.get("bootstrap_ci")
    return {"value": float(v["value"]), **({"ci95": [float(ci[0]), float(ci[1])]} if ci else {})}


def metadata_from_run(run_dir: str | os.PathLike, name: str, licence: str | None = None) -> PresetMetadata:
    """Metadata for a preset made from a finished run: its classes, size, threshold (chosen on
    validation), test metrics with CIs, training images per split from ``splits.csv``, the
    data source with its licence (``KNOWN_LICENCES`` or ``licence``), the command and argv."""
    import pandas as pd

    run = Path(run_dir)
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    model_cfg = json.loads((run / "model.json").read_text())["config"]
    metrics = json.loads((run / "metrics.json").read_text())
    env = json.loads((run / "environment.json").read_text()) if (run / "environment.json").is_file() else {}
    names = list(model_cfg["class_names"])
    thr = metrics.get("threshold")
    data_dir = str(cfg.get("data_dir") or "")
    source = Path(data_dir).name if data_dir else f"synthetic ({cfg.get('experiment', 'run')} demo data)"
    counts = {}
    if (run / "splits.csv").is_file():
        counts = pd.read_csv(run / "splits.csv")["split"].value_counts().to_dict()
    default_licence = ("none: synthetic images generated by cxr_tf" if not data_dir
                       else KNOWN_LICENCES.get(source, "unknown: state it before sharing these weights"))
    training = [{"source": source, "images": int(counts.get("train", 0)), "licence": licence or default_licence,
                 "split": "train", "validation_images": int(counts.get("val", 0)),
                 "held_out_test_images": int(counts.get("test", 0)),
                 "split_file": "splits.csv (copied from the run: item, patient, split)"}]
    held_out = f"{source} test split ({metrics.get('n', counts.get('test', '?'))} images, patient-level)"
    ms = {k: _stat(metrics.get(k)) for k in ("accuracy", "macro_auc")}
    per_class = metrics.get("per_class") or {}
    if len(names) == 2 and names[1] in per_class:  # binary: the positive class's view says it all
        for m in ("sensitivity", "specificity"):
            ms[m] = _stat(per_class[names[1]].get(m))
    else:
        for c, pc in per_class.items():
            for m in ("sensitivity", "specificity"):
                ms[f"{m}_{c}"] = _stat(pc.get(m))
    cal = json.loads((run / "calibration.json").read_text()) if (run / "calibration.json").is_file() else None
    # the thresholds were chosen on the calibrated scale: whoever uses them applies T first
    calibration = ({"method": "temperature", "temperature": float(cal["temperature"]), "fit_on": "val",
                    **{k: cal[k] for k in ("ece_before", "ece_after", "n_bins") if k in cal}}
                   if cal and cal.get("temperature") else None)
    return PresetMetadata(
        calibration=calibration,
        name=name, description=f"{model_cfg['backbone']} {len(names)}-class classifier from run {run.name} "
                               f"({cfg.get('experiment', '?')})",
        class_names=names, image_size=int(model_cfg["image_size"]),
        thresholds={names[1]: float(thr)} if thr is not None and len(names) == 2 else {},
        training_data=training, metrics={held_out: {k: v for k, v in ms.items() if v is not None}},
        limitations=["Trained on one collection: expect lower specificity on radiographs from other sites, "
                     "scanners or age groups; check on your own normals before use."],
        command=" ".join(env.get("argv") or []) or f"(experiment {cfg.get('experiment', '?')})",
        extra={"run_dir": str(run), "run_config": cfg})


def save_preset_from_run(run_dir: str | os.PathLike, name: str, out: str | os.PathLike | None = None, *,
                         weights_dtype: str = "float16", overwrite: bool = False,
                         licence: str | None = None, description: str | None = None) -> Path:
    """``cxr-tf presets save --run RUN --name NAME``: a finished run's best checkpoint as a preset
    (default folder: the user cache, so ``preset:NAME`` finds it at once)."""
    from cxr_tf.models.classifier import CXRClassifier

    run = Path(run_dir)
    ckpt = run / "checkpoints" / "best.weights.h5"
    for f in (run / "model.json", run / "metrics.json", ckpt):
        if not f.is_file():
            raise CXRWeightsError(f"{f}: not found; presets are saved from a finished cxr_tf run "
                                  "(model.json, metrics.json, checkpoints/best.weights.h5)")
    meta = metadata_from_run(run, name, licence)
    if description:
        meta.description = description
    model = CXRClassifier.from_config(json.loads((run / "model.json").read_text())["config"])
    model.load_weights(str(ckpt))
    splits = run / "splits.csv"
    return save_preset(model, Path(out) if out else presets_home() / name, meta,
                       weights_dtype=weights_dtype, overwrite=overwrite,
                       extra_files={"splits.csv": splits} if splits.is_file() else None)
