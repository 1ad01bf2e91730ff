"""The model zoo: named, versioned model releases whose weight files are checked by sha256.

A *release* is one version of one model: ``brain-mr@1``. Users name a model with
``NAME`` (the newest release shipped) or ``NAME@VERSION`` (that one, while it is still
shipped); :func:`lookup` turns either into a :class:`Release`, and :func:`verify` checks
the weight file against the sha256 its plugin recorded before anything reads it.

**A zoo folder** (:func:`folder_models`, how ``ddmr_plugins.models`` ships brain-mr and
abdomen-ct, and how a third-party package can ship its own) holds, flat:

* ``<name>@<version>.pt`` -- the weights: a ddmr checkpoint written by ``ddmr export``;
* ``<name>@<version>.json`` -- its model card (:mod:`ddmr_core.model.card`, the schema);
* ``SHA256SUMS`` -- one line ``<sha256 hex>  <name>@<version>.pt`` per weight file, the
  format of coreutils' ``sha256sum`` (so ``sha256sum -c SHA256SUMS`` checks the folder);
* any notice files the cards name (``notices``), e.g. a data licence that must travel
  with the weights.

Versions are dotted non-negative integers (``1``, ``1.2``, ``2.0.1``) compared
numerically. ``NAME@1`` picks release ``1`` if it is shipped, else the newest ``1.x``.

Adding a release: ``ddmr export RUN/best.pt --out FOLDER/<name>@<version>.pt --card
card.json`` validates the card, writes the weights, the card beside them and the
weights' line in ``FOLDER/SHA256SUMS`` (:func:`ddmr_core.model.publish.add_release`); ``ddmr models
hash FILE`` recomputes a line for a weight file copied in by hand (:func:`ddmr_core.model.publish.record_sha256`).

**Models from plugins that return only a checkpoint** (a path or an open file, the
``ddmr_models`` hook's original contract) are releases without a version, a recorded
sha256 or a card file: they load as before, unverified, and are listed with "unknown"
fields (the card embedded in the checkpoint by ``ddmr export --card`` is shown if there is
one). A factory may instead return a :class:`Release` or a list of them
(:func:`folder_models` builds such factories).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, PluginError, UnknownNameError

#: a model reference: ``NAME`` or ``NAME@VERSION``
REF = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_-]*)(?:@(?P<version>[0-9]+(?:\.[0-9]+)*))?\Z")
#: the file names of a zoo folder's weights: ``<name>@<version>.pt``
WEIGHT_FILE = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_-]*)@(?P<version>[0-9]+(?:\.[0-9]+)*)\.pt\Z")
#: the sha256 registry of a zoo folder
SUMS = "SHA256SUMS"
_SUM_LINE = re.compile(r"(?P<sha>[0-9a-fA-F]{64}) [ *](?P<file>\S.*)\Z")


class IntegrityError(CheckpointError):
    """A model's weight file does not match the sha256 recorded for it (or none is)."""


def version_key(version: str | None) -> tuple:
    """Sort key of a version: ``"1.10"`` after ``"1.9"``; no version sorts first."""
    return () if version is None else tuple(int(p) for p in version.split("."))


def parse_ref(spec) -> tuple[str, str | None] | None:
    """``(name, version or None)`` of ``"NAME"`` or ``"NAME@VERSION"``; ``None`` if ``spec``
    is not written like a model reference (then it can only be a file)."""
    m = REF.match(spec) if isinstance(spec, str) else None
    return (m["name"], m["version"]) if m else None


def file_sha256(source) -> str:
    """Hex sha256 of a file (path) or of what remains of an open binary file (which is
    then rewound to where it was)."""
    h = hashlib.sha256()
    if hasattr(source, "read"):
        start = source.tell()
        for chunk in iter(lambda: source.read(1 << 20), b""):
            h.update(chunk)
        source.seek(start)
        return h.hexdigest()
    with open(source, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Release:
    """One release of a model.

    Attributes:
        name: the model's name (``brain-mr``).
        version: ``"1"``, ``"1.2"``...; ``None`` for a plugin model shipped without one.
        source: the checkpoint: a :class:`~pathlib.Path`, or an open binary file.
        sha256: the hex digest recorded for the weight file; ``None`` when the plugin
            records none (the file is then loaded unverified).
        card: the model card (a dict), ``None`` when there is none; ``card_error`` says why
            a card file could not be read.
        registry_file: the ``SHA256SUMS`` the digest comes from (in a zoo folder).
        plugin, distribution: who registered it.
    """

    name: str
    version: str | None
    source: Any
    sha256: str | None = None
    card: dict | None = None
    card_file: Path | None = None
    card_error: str | None = None
    registry_file: Path | None = None
    plugin: str = "<local>"
    distribution: str = "<local>"
    notices: tuple = field(default=())

    @property
    def ref(self) -> str:
        """``name@version`` (or the bare name for an unversioned model)."""
        return self.name if self.version is None else f"{self.name}@{self.version}"

    @property
    def path(self) -> Path | None:
        return self.source if isinstance(self.source, Path) else None

    @property
    def size(self) -> int | None:
        """The weight file's size in bytes (``None`` for an open file)."""
        return self.path.stat().st_size if self.path is not None and self.path.is_file() else None

    def describe(self) -> dict:
        """What results record of the model: name, version, sha256 and where it came from."""
        return {"name": self.name, "version": self.version, "ref": self.ref, "sha256": self.sha256,
                "plugin": self.plugin, "distribution": self.distribution}


# ------------------------------------------------------------------ folders
def read_sums(path: Path) -> dict[str, str]:
    """``{file name: sha256 hex}`` of a ``SHA256SUMS`` file (missing file: empty).

    Raises:
        PluginError: a line that is not ``<64 hex digits>  <file name>``.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    sums = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = _SUM_LINE.match(line.strip())
        if not m or "/" in m["file"]:
            raise PluginError(f"{str(path)!r} line {i}: expected '<sha256>  <file name>', got {line.strip()[:60]!r}")
        sums[m["file"]] = m["sha"].lower()
    return sums


def _read_card(path: Path) -> tuple[dict | None, str | None]:
    if not path.is_file():
        return None, f"no card file {path.name}"
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"card file {path.name} is not readable JSON: {exc}"
    if not isinstance(card, dict):
        return None, f"card file {path.name} does not hold a JSON object"
    return card, None


def folder_releases(folder: str | Path) -> dict[str, list[Release]]:
    """``{name: [releases, oldest first]}`` of the weight files in a zoo folder (see the
    module docstring), each with its card and recorded sha256 (``None`` when its line is
    missing from ``SHA256SUMS``: :func:`verify` then refuses it)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    sums = read_sums(folder / SUMS)
    out: dict[str, list[Release]] = {}
    for p in sorted(folder.iterdir()):
        m = WEIGHT_FILE.match(p.name)
        if not m or not p.is_file():
            continue
        card_file = p.with_suffix(".json")
        card, error = _read_card(card_file)
        notices = tuple(folder / n for n in (card or {}).get("notices", ()) if isinstance(n, str))
        out.setdefault(m["name"], []).append(Release(
            m["name"], m["version"], p, sums.get(p.name), card, card_file, error, folder / SUMS, notices=notices))
    for releases in out.values():
        releases.sort(key=lambda r: version_key(r.version))
    return out


def folder_models(folder: str | Path) -> dict:
    """``{name: factory}`` for a ``ddmr_models`` hook: one name per model in the zoo folder,
    its factory returning the model's releases. A plugin ships a zoo with::

        @hookimpl
        def ddmr_models():
            return folder_models(Path(__file__).parent / "weights")
    """
    folder = Path(folder)

    def factory_for(name):
        def releases():
            return folder_releases(folder).get(name, [])

        releases.__doc__ = f"the releases of {name} in {folder}"
        return releases

    return {name: factory_for(name) for name in folder_releases(folder)}


# ------------------------------------------------------------------- lookup
def entry_releases(entry) -> list[Release]:
    """The releases of a registered model (a :class:`ddmr_core.plugins.registry.Entry`): what its
    factory returns, as :class:`Release` objects, oldest first.

    Raises:
        PluginError: the factory fails, or returns something that is not a checkpoint
            (path or open file), a release or a list of releases, or a missing file.
    """
    origin = f"model {entry.name!r} of plugin {entry.plugin!r} ({entry.distribution})"
    try:
        got = entry.factory()
    except Exception as exc:
        raise PluginError(f"{origin} failed: {type(exc).__name__}: {exc}") from exc
    items = list(got) if isinstance(got, (list, tuple)) else [got]
    out = []
    for item in items:
        if isinstance(item, Release):
            if item.name != entry.name:
                raise PluginError(f"{origin}: its factory returned a release of {item.name!r}")
            out.append(replace(item, plugin=entry.plugin, distribution=entry.distribution))
        elif hasattr(item, "read") and not isinstance(item, (str, Path)):
            out.append(Release(entry.name, None, item, plugin=entry.plugin, distribution=entry.distribution))
        elif isinstance(item, (str, Path)) or hasattr(item, "__fspath__"):
            out.append(Release(entry.name, None, Path(item), plugin=entry.plugin, distribution=entry.distribution))
        else:
            raise PluginError(f"{origin}: its factory returned {type(item).__name__}, not a checkpoint path")
    if not out:
        raise PluginError(f"{origin}: its factory returned no release")
    for r in out:
        if r.path is not None and not r.path.is_file():
            raise PluginError(f"{origin}: its checkpoint {str(r.path)!r} does not exist")
    return sorted(out, key=lambda r: version_key(r.version))


def pick(releases: list[Release], version: str | None) -> Release | None:
    """The release ``NAME@version`` names: the newest if ``version`` is ``None``, else that
    version, else the newest whose version starts with it (``1`` -> ``1.2``)."""
    if not releases:
        return None
    if version is None:
        return max(releases, key=lambda r: version_key(r.version))
    exact = [r for r in releases if r.version is not None and version_key(r.version) == version_key(version)]
    if exact:
        return exact[-1]
    n = len(version_key(version))
    within = [r for r in releases if r.version is not None and version_key(r.version)[:n] == version_key(version)]
    return max(within, key=lambda r: version_key(r.version)) if within else None


def lookup(spec, registry=None) -> Release | None:
    """The release ``spec`` names (``NAME`` or ``NAME@VERSION``), or ``None`` when ``spec``
    is a checkpoint file: an open file, a :class:`~pathlib.Path`, an existing file (a path
    wins over a name) or a string that cannot be a model reference.

    Raises:
        UnknownNameError: no model of that name (the message lists the registered names,
            with a did-you-mean), or no such version of it (the message lists its versions).
        PluginError: the model's factory fails (:func:`entry_releases`).
    """
    from ..plugins.registry import Registry, unknown_name_message

    if hasattr(spec, "read") or isinstance(spec, Path) or spec is None:
        return None
    spec = str(spec)
    ref = parse_ref(spec)
    if ref is None or Path(spec).is_file():
        return None
    name, version = ref
    registry = registry if registry is not None else Registry(bind_gin=False)
    names = registry.names("models")
    if name not in names:
        raise UnknownNameError(unknown_name_message(
            "models", name, names, intro=f"model {spec!r} is neither a checkpoint file nor a registered model name"))
    releases = entry_releases(registry.entry("models", name))
    chosen = pick(releases, version)
    if chosen is None:
        shipped = ", ".join(r.ref for r in releases)
        raise UnknownNameError(f"model {spec!r}: version {version} is not shipped; installed: {shipped}")
    return chosen


def verify(release: Release) -> Release:
    """Check ``release``'s weight file against its recorded sha256 before it is loaded.

    A release from a zoo folder must have a line in its ``SHA256SUMS``; a plugin model
    without a recorded digest (a factory returning only a path) is not checked.

    Raises:
        IntegrityError: the file's sha256 differs from the recorded one, or a zoo
            release has no recorded digest.
    """
    if release.sha256 is None:
        if release.registry_file is not None:
            raise IntegrityError(
                f"model {release.ref}: its weight file {str(release.source)!r} has no sha256 in "
                f"{str(release.registry_file)!r}; refusing to load an unregistered file "
                f"(a maintainer adds it with `ddmr models hash {release.source}`)")
        return release
    got = file_sha256(release.source)
    if got != release.sha256:
        where = (f"the sha256 recorded in {str(release.registry_file)!r}" if release.registry_file
                 else "its recorded sha256")
        raise IntegrityError(
            f"model {release.ref}: weight file {describe_source(release.source)!r} does not match {where} "
            f"(expected {release.sha256[:16]}..., got {got[:16]}...): it was modified or corrupted; "
            "reinstall the package that ships it")
    return release


def describe_source(source) -> str:
    if hasattr(source, "read") and not isinstance(source, (str, Path)):
        return str(getattr(source, "name", None) or "<checkpoint stream>")
    return str(source)


def identify(spec, source, release: Release | None = None) -> dict:
    """What a result records of the model it used: ``{name, version, ref, sha256, checkpoint}``.

    ``release``: the release ``spec`` named (from :func:`lookup`), else ``spec`` was a
    checkpoint file: then the name is the card's (``ddmr export --card``) or the file's,
    the version the card's, and the sha256 is computed from the file."""
    if release is not None:
        info = release.describe()
        if info["sha256"] is None and (release.path is not None or hasattr(source, "seek")):
            info["sha256"] = file_sha256(source)  # unverified, but still which file it was
        info["checkpoint"] = describe_source(source)
        return info
    name = Path(describe_source(source)).name
    for suffix in (".pt", ".pth", ".ckpt"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    sha = None
    if isinstance(source, (str, Path)) and Path(source).is_file():
        sha = file_sha256(source)
    elif hasattr(source, "seek"):
        sha = file_sha256(source)
    ref = parse_ref(name)
    version = ref[1] if ref else None
    name = ref[0] if ref else name
    return {"name": name, "version": version, "ref": name if version is None else f"{name}@{version}",
            "sha256": sha, "plugin": None, "distribution": None, "checkpoint": describe_source(source)}


def field_description(info: dict) -> str:
    """The short text a field file's NIfTI header records (``descrip``, at most 79 bytes of
    ASCII): ``"ddmr brain-mr@1 sha256:0123456789ab"``."""
    ref = "".join(c if 32 <= ord(c) < 127 else "?" for c in str(info.get("ref") or "?"))
    sha = info.get("sha256")
    tail = f" sha256:{sha[:12]}" if sha else ""
    head = "ddmr "
    room = 79 - len(head) - len(tail)
    if len(ref) > room:
        ref = ref[: room - 3] + "..."
    return head + ref + tail


def embedded_card(release: Release) -> dict | None:
    """The card stored inside the checkpoint (``ddmr export --card``), for a release
    without a card file; ``None`` if it has none or cannot be read."""
    from .checkpoint import load_checkpoint

    source = release.source
    try:
        if hasattr(source, "read"):
            data = source.read()
            source.seek(0)
            source = io.BytesIO(data)
        card = load_checkpoint(source).get("card")
    except Exception:
        return None
    return card if isinstance(card, dict) else None
