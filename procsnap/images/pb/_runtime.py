"""What the generated ``*_pb2`` modules build their descriptors and classes with.

scripts/gen-protos makes them import ``_builder``, ``_descriptor`` and
``_descriptor_pool`` from here instead of from google.protobuf.  Where
protobuf runs on its upb C extension (protobuf >= 4.21 from PyPI: the
default), protobuf's own ``internal.builder`` does nothing but put each
file into upb's default pool and make each class with upb's
``MessageMeta``; yet importing it (with ``descriptor_pool``) loads the
pure-Python message implementation, text_format, the well-known types,
datetime, pickle...: about 15 ms at every start of procsnap, a tenth of a
CLI dump of a small process.  So with upb we make the same calls
ourselves, on the same pool, giving the same classes
(``MessageMeta`` returns the class it already made for a descriptor, so a
module loaded by protobuf's builder later agrees with ours).  Any other
implementation (``python``, or ``cpp`` as Debian's 4.21 that crit runs
on), or one chosen with PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION, gets
protobuf's own modules unchanged.
"""
from __future__ import annotations

from types import SimpleNamespace
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from google.protobuf.internal import api_implementation

if api_implementation.Type() == "upb":
    from google._upb import _message
    from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
    from google.protobuf.message import Message

    def _nested_descriptors(module: dict[str, Any], msg_des: Any, prefix: str) -> None:
        for name, nested in msg_des.nested_types_by_name.items():
            module[prefix + name.upper()] = nested
            _nested_descriptors(module, nested, prefix + name.upper() + "_")
        for enum_des in msg_des.enum_types:
            module[prefix + enum_des.name.upper()] = enum_des

    def _message_and_enum_descriptors(file_des: Any, module: dict[str, Any]) -> None:
        """The module's _NAME globals, as protobuf's builder sets them."""
        for name, msg_des in file_des.message_types_by_name.items():
            module["_" + name.upper()] = msg_des
            _nested_descriptors(module, msg_des, "_" + name.upper() + "_")

    def _message_class(module_name: str, msg_des: Any, prefix: str) -> Any:
        attrs: dict[str, Any] = {
            name: _message_class(module_name, nested, prefix + msg_des.name + ".")
            for name, nested in msg_des.nested_types_by_name.items()}
        attrs.update(DESCRIPTOR=msg_des, __module__=module_name,
                     __qualname__=prefix + msg_des.name)
        return _message.MessageMeta(msg_des.name, (Message,), attrs)

    def _top_descriptors_and_messages(file_des: Any, module_name: str,
                                      module: dict[str, Any]) -> None:
        """Top-level enums (wrapper and values), extensions and message
        classes, as protobuf's builder makes them (our schemas have no
        services)."""
        for name, enum_des in file_des.enum_types_by_name.items():
            module["_" + name.upper()] = enum_des
            module[name] = EnumTypeWrapper(enum_des)
            for value in enum_des.values:
                module[value.name] = value.number
        for name, ext_des in file_des.extensions_by_name.items():
            module[name.upper() + "_FIELD_NUMBER"] = ext_des.number
            module[name] = ext_des
        for name, msg_des in file_des.message_types_by_name.items():
            module[name] = _message_class(module_name, msg_des, "")

    _WKT = "google.protobuf.internal.well_known_types"

    def skip_well_known_types() -> bool:
        """For a process that will make no message class of protobuf's
        well-known types (Any, Timestamp, Duration, Struct, FieldMask...):
        the command line's dump and restore, never a library user.

        upb makes every message class with ``MessageMeta``, which at its
        first call imports well_known_types for the mixins of those types
        (with datetime, calendar, descriptor.py, field_mask: ~5 % of the
        instructions of a small CLI dump) and keeps its WKTBASES dict for
        the life of the process.  Here that first call meets an empty dict
        instead: our classes are the same (none is well-known), and a
        well-known class made later in this process would lack its mixin
        methods (ToDatetime...).  Call before any message class is made;
        True when it took effect.  ``end_skip_well_known_types`` takes the
        stand-in out of sys.modules (a later import gets the real module)."""
        import sys
        import types
        if _WKT in sys.modules:
            return False
        stub = types.ModuleType(_WKT, "procsnap's stand-in: no well-known type is made here")
        stub.WKTBASES = {}  # type: ignore[attr-defined]
        sys.modules[_WKT] = stub
        return True

    def end_skip_well_known_types() -> None:
        import sys
        mod = sys.modules.get(_WKT)
        if mod is not None and not hasattr(mod, "__file__"):
            del sys.modules[_WKT]

    _descriptor: Any = SimpleNamespace(_USE_C_DESCRIPTORS=True)
    _descriptor_pool: Any = SimpleNamespace(Default=lambda: _message.default_pool)
    _builder: Any = SimpleNamespace(
        BuildMessageAndEnumDescriptors=_message_and_enum_descriptors,
        BuildTopDescriptorsAndMessages=_top_descriptors_and_messages)
else:
    def skip_well_known_types() -> bool:
        """Protobuf's own implementation makes its classes its own way."""
        return False

    def end_skip_well_known_types() -> None:
        pass

    from google.protobuf import descriptor as _descriptor  # noqa: F401
    from google.protobuf import descriptor_pool as _descriptor_pool  # noqa: F401
    from google.protobuf.internal import builder as _builder  # noqa: F401
