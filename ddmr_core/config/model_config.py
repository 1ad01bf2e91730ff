"""The model's part of a config, and a checkpoint's config read as untrusted data.

:func:`model_config_text` keeps what configures the model (no data, augmentation, training
or scoring bindings) for the checkpoint to carry; :func:`parse_checkpoint_config` parses it
back safely (bindings of model components only, no ``import`` or ``include``).
"""

from __future__ import annotations

import tokenize

import gin
from gin import config_parser

from ..errors import ConfigError
from ..plugins.registry import Registry
from .parsing import _flatten, _Macro, config_statements, import_gin_modules, parse_config, translate_gin_error


#: plugin kinds a checkpoint's config may make the model build (nothing reads files)
MODEL_KINDS = ("backbones", "losses", "loss_weightings")


def parse_checkpoint_config(text, source: str, registry: Registry | None = None) -> Registry:
    """Parse the gin config stored in a checkpoint (an untrusted file) safely.

    A checkpoint's config may only *bind values*: it is parsed statement by statement
    with gin's own parser before gin acts on any of it, and refused, naming ``source``,
    if it holds an ``import`` or ``include`` statement (so loading never imports a module
    or reads another file), or if it makes the model (``ddmr.build_model``) call anything
    but the model components of :data:`MODEL_KINDS` (not, say, a dataset that reads
    files). Then it replaces the current config like :func:`parse_config`.

    Raises:
        ConfigError: naming ``source`` and the refused statement or reference.
    """
    import_gin_modules()
    registry = registry if registry is not None else Registry()
    registry.bind_gin()
    if not isinstance(text, str):
        raise ConfigError(f"{source}: its gin config is not text")
    try:
        statements = config_statements(text)
    except RecursionError:
        raise ConfigError(f"{source}: invalid gin config: a value nested too deeply") from None
    except (SyntaxError, ValueError, tokenize.TokenError) as exc:
        raise translate_gin_error(exc, registry, source) from exc
    for st in statements:
        if isinstance(st, (config_parser.ImportStatement, config_parser.IncludeStatement)):
            kind = "import" if isinstance(st, config_parser.ImportStatement) else "include"
            raise ConfigError(
                f"{source}: its gin config has an `{kind}` statement (line {st.location.line_num}); a "
                "checkpoint's config may only bind values, so it is refused (nothing was imported or read)")
    _check_model_references(statements, source, registry)
    return parse_config(text=text, registry=registry)


#: plugin kinds, and library configurables, that configure training, data or scoring,
#: not the model: left out of the config a checkpoint carries (:func:`model_config_text`)
NOT_MODEL_KINDS = ("augmenters", "datasets", "baselines", "metrics")
NOT_MODEL_CONFIGURABLES = ("ddmr.build_dataset", "ddmr.build_augmentation", "ddmr.Trainer", "ddmr.finetune",
                           "ddmr.preprocess")


def model_config_text(text: str, registry: Registry | None = None) -> str:
    """The part of a gin config ``text`` (``gin.config_str()``'s output) that builds the
    model, for a checkpoint or an exported model: every binding but those of data,
    augmentation, training and scoring (:data:`NOT_MODEL_KINDS`,
    :data:`NOT_MODEL_CONFIGURABLES`), the macros the kept bindings use, no ``import``
    or ``include`` and no comments. A shared model so carries no data paths, and nothing
    a (trusted) config read from other files beyond what the model needs.

    Text gin cannot parse is returned unchanged (the checkpoint loader refuses it)."""
    try:
        statements = config_statements(text)
    except (SyntaxError, ValueError, tokenize.TokenError, RecursionError):
        return text
    registry = registry if registry is not None else Registry(bind_gin=False)

    def ident(selector: str):
        try:
            return id(gin.get_configurable(selector))
        except (ValueError, KeyError):
            return None

    dropped = {ident(s) for s in NOT_MODEL_CONFIGURABLES}
    dropped |= {ident(f"ddmr.{kind}.{name}") for kind in NOT_MODEL_KINDS for name in registry.names(kind)}
    dropped.discard(None)
    lines = text.splitlines()
    starts = [st.location.line_num for st in statements] + [len(lines) + 1]
    spans = {id(st): (starts[i], starts[i + 1]) for i, st in enumerate(statements)}
    kept, macros, pending = [], {}, []
    for st in statements:
        if not isinstance(st, config_parser.BindingStatement):
            continue
        if not st.arg_name:
            macros[f"{st.scope}/{st.selector}" if st.scope else st.selector] = st
        elif ident(st.selector) not in dropped:
            kept.append(st)
            pending.append(st.value)
    used: set = set()
    while pending:  # the macros the kept bindings use, and those they use in turn
        for item in _flatten(pending.pop()):
            if isinstance(item, _Macro) and item.name not in used and item.name in macros:
                used.add(item.name)
                pending.append(macros[item.name].value)
    keep = [st for st in statements if isinstance(st, config_parser.BindingStatement)
            and ((not st.arg_name and (f"{st.scope}/{st.selector}" if st.scope else st.selector) in used)
                 or any(st is k for k in kept))]
    out = []
    for st in sorted(keep, key=lambda s: s.location.line_num):
        first, end = spans[id(st)]
        out += [ln for ln in lines[first - 1:end - 1] if ln.strip() and not ln.lstrip().startswith("#")]
    return "\n".join(out) + ("\n" if out else "")


def _check_model_references(statements, source: str, registry: Registry) -> None:
    """Every reference reachable from the model's bindings must name a model component."""
    def configurable(selector: str):
        try:
            return gin.get_configurable(selector)
        except (ValueError, KeyError):
            raise ConfigError(f"{source}: its gin config refers to {selector!r}, which is not a "
                              "registered configurable") from None

    allowed = {id(configurable(f"ddmr.{kind}.{name}"))
               for kind in MODEL_KINDS for name in registry.names(kind)}
    roots = allowed | {id(configurable("ddmr.build_model"))}
    macros: dict[str, list] = {}
    pending = []
    for st in statements:
        if not isinstance(st, config_parser.BindingStatement):
            continue
        if not st.arg_name:  # a macro: NAME = value
            macros.setdefault(f"{st.scope}/{st.selector}" if st.scope else st.selector, []).append(st.value)
        elif id(configurable(st.selector)) in roots:
            pending.append(st.value)
    seen: set = set()
    while pending:
        for item in _flatten(pending.pop()):
            if isinstance(item, _Macro):
                if item.name not in seen:
                    seen.add(item.name)
                    pending.extend(macros.get(item.name, ()))
                continue
            selector = item.name.rsplit("/", 1)[-1]
            if id(configurable(selector)) not in allowed:
                raise ConfigError(
                    f"{source}: its gin config makes the model call {selector!r}, which is not a model "
                    f"component ({', '.join(MODEL_KINDS)}); refused")
