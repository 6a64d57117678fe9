"""The gateway's DICOM listener: Verification SCP (C-ECHO) and Storage SCP (C-STORE, PS3.4 Annex B).

Association negotiation (PS3.8 7.1.1.13, PS3.7 D.3.3.2): the gateway supports exactly the SOP classes the
decoder analyses (:data:`analysis.decode.FUNDUS_SOP_CLASSES`: Ophthalmic Photography 8/16-bit, VL
Photographic, Wide-Field OP, Secondary Capture incl. multi-frame) in the transfer syntaxes it decodes
(:data:`analysis.decode.ACCEPTED_TRANSFER_SYNTAXES`: uncompressed, deflated, JPEG baseline/extended/lossless,
JPEG-LS, JPEG 2000, RLE), plus Verification. A presentation context for any other SOP class (a CT, an SR) is
rejected with *abstract syntax not supported*, so the sender knows before it sends a byte of pixel data. The
called AE title must be the gateway's; the calling AE titles may be restricted (``allowed_calling``).

C-STORE (PS3.4 B.2.3): an instance that gets through negotiation is checked by decoding it once at low
resolution with :func:`analysis.decode.decode` (the same code the service runs, so what is queued can be
analysed); an unusable one is refused with a failure status and an Error Comment (0000,0902) naming why
(never an element value):

=========================================================  ===============================================
problem                                                    status
=========================================================  ===============================================
no Pixel Data, not a fundus image, unsupported photometric  0xA900 Error: Data Set does not match SOP Class
interpretation / bit depth, image too small
corrupt or truncated file                                   0xC000 Error: Cannot understand
larger than the limits                                      0xA700 Refused: Out of Resources
the queue cannot be written (disk full, I/O error)          0xA700 Refused: Out of Resources
=========================================================  ===============================================

Otherwise the instance is written durably to the queue (:meth:`DurableQueue.enqueue`) and only THEN
answered 0x0000 Success.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from analysis.decode import ACCEPTED_TRANSFER_SYNTAXES, FUNDUS_SOP_CLASSES, DecodeLimits, decode
from analysis.errors import FoveaError, PayloadTooLarge, UnreadableImage
from service.gateway.queue import DurableQueue

__all__ = ["ScpConfig", "build_ae", "check_instance", "store_handler"]

log = logging.getLogger("fovea.gateway")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
#: The checking decode only needs to prove the pixels decode; a JPEG is decoded at 1/8 scale when it can be.
_CHECK_TARGET = 64


@dataclass(frozen=True, kw_only=True)
class ScpConfig:
    """``ae_title``: the gateway's (called) AE title. ``allowed_calling``: calling AE titles accepted (empty:
    any). ``limits``: the decoder limits of the instance check (the service's defaults)."""

    ae_title: str = "FOVEA"
    allowed_calling: tuple[str, ...] = ()
    limits: DecodeLimits = DecodeLimits()
    maximum_associations: int = 10


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]  # LO: at most 64 characters (PS3.5 6.2)
    return ds


def check_instance(part10: bytes, limits: DecodeLimits) -> Dataset | None:
    """``None`` when ``part10`` can be analysed, else the failure status dataset (module docstring)."""
    try:
        decode(part10, limits=replace(limits, max_frames=1), target=_CHECK_TARGET)
    except FoveaError as exc:
        # The error code first, so the 64 characters of the comment always name the kind of problem.
        code = OUT_OF_RESOURCES if isinstance(exc, PayloadTooLarge) else \
            CANNOT_UNDERSTAND if isinstance(exc, UnreadableImage) else DOES_NOT_MATCH_SOP_CLASS
        return _status(code, f"{exc.code}: {exc.message}")
    return None


def store_handler(queue: DurableQueue, limits: DecodeLimits,
                  on_queued: Callable[[], None] = lambda: None) -> Callable[[evt.Event], int | Dataset]:
    """The EVT_C_STORE handler: check, queue durably, then answer (module docstring)."""

    def handle_store(event: evt.Event) -> int | Dataset:
        part10 = event.encoded_dataset(include_meta=True)
        refused = check_instance(part10, limits)
        if refused is not None:
            log.warning("C-STORE refused with 0x%04X: %s", refused.Status, refused.ErrorComment)
            return refused
        request = event.request
        try:
            key, duplicate = queue.enqueue(part10, sop_instance_uid=str(request.AffectedSOPInstanceUID),
                                           sop_class_uid=str(request.AffectedSOPClassUID))
        except OSError as exc:  # not durable, so not acknowledged: the sender keeps the instance and retries
            log.error("C-STORE refused: the queue could not be written (%s)", type(exc).__name__)
            return _status(OUT_OF_RESOURCES, "the gateway queue could not be written")
        log.info("C-STORE from %s: item %s %s", event.assoc.requestor.ae_title, key,
                 "already queued" if duplicate else "queued")
        if not duplicate:
            on_queued()
        return SUCCESS

    return handle_store


def build_ae(queue: DurableQueue, config: ScpConfig = ScpConfig(),
             on_queued: Callable[[], None] = lambda: None) -> tuple[AE, list[tuple[evt.EventType, Callable]]]:
    """The configured application entity and its event handlers, ready for ``ae.start_server(address,
    evt_handlers=handlers, block=...)``."""
    ae = AE(ae_title=config.ae_title)
    # Security: only associations addressed to us, and (when configured) only from known peers.
    ae.require_called_aet = True
    if config.allowed_calling:
        ae.require_calling_aet = list(config.allowed_calling)
    ae.maximum_associations = config.maximum_associations
    ae.add_supported_context(Verification)
    syntaxes = sorted(ACCEPTED_TRANSFER_SYNTAXES)
    for sop_class in sorted(FUNDUS_SOP_CLASSES):
        ae.add_supported_context(sop_class, syntaxes)
    handlers = [(evt.EVT_C_STORE, store_handler(queue, config.limits, on_queued))]
    return ae, handlers
