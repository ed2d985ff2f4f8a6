"""tier3's event contracts: Avro schemas and the codec that frames them."""

from tier3.schemas.codec import (
    Codec,
    Decoded,
    DecodeError,
    EncodeError,
    SingleObjectCodec,
    codec_for,
)

__all__ = ["Codec", "DecodeError", "Decoded", "EncodeError", "SingleObjectCodec", "codec_for"]
