"""Type stub of the compiled ISO 8583 twin (same API as ``_fastcore._iso8583_py``)."""

from collections.abc import Mapping
from typing import Any

from iso8583.decoder import DecodeError as DecodeError
from iso8583.encoder import EncodeError as EncodeError

from ._iso8583_py import FieldNotInSpecDecodeError as FieldNotInSpecDecodeError
from ._iso8583_py import FieldNotInSpecEncodeError as FieldNotInSpecEncodeError

SpecDict = Mapping[str, Mapping[str, Any]]
EncodedDict = dict[str, dict[str, bytes]]

def encode(doc_dec: dict[str, Any], spec: SpecDict) -> tuple[bytearray, EncodedDict]: ...
def decode(data: bytes | bytearray, spec: SpecDict) -> tuple[dict[str, str], EncodedDict]: ...
def invalidate(spec: SpecDict | None = None) -> None: ...

class Codec:
    @property
    def spec(self) -> SpecDict: ...
    def __init__(self, spec: SpecDict) -> None: ...
    def decode(self, data: bytes | bytearray) -> dict[str, str]: ...
    def encode(self, fields: dict[str, Any]) -> bytes: ...
