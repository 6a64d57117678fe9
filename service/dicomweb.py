"""DICOMweb for Fovea (PS3.18): STOW-RS in, analysis in the background, results out by QIDO-RS and WADO-RS.

:func:`create_app` builds a Starlette app; the BentoML service mounts it at ``/dicomweb``. Resources (paths
relative to the mount):

=================================================================  ===============================================
``POST /studies``, ``POST /studies/{study}``                       STOW-RS Store Instances (PS3.18 10.5):
                                                                   ``multipart/related; type="application/dicom"``
``GET /studies``, ``/series``, ``/instances``,                     QIDO-RS Search (PS3.18 10.6) over the results:
``/studies/{study}/series``, ``/studies/{study}/instances``,       ``application/dicom+json`` (PS3.18 F.2)
``/studies/{study}/series/{series}/instances``
``GET /studies/{study}[/series/{series}[/instances/{sop}]]``       WADO-RS Retrieve (PS3.18 10.4):
                                                                   ``multipart/related; type="application/dicom"``
``GET .../metadata`` at the same three levels                      WADO-RS Retrieve metadata (DICOM JSON)
``GET /analyses/{sop}``                                            Fovea's own: the analysis state of a received
                                                                   instance (202 while pending or running)
=================================================================  ===============================================

STOW-RS checks every part with the decoder's header checks (:func:`analysis.decode.read_dicom_header`: Part
10, a fundus SOP class, pixel data present, a supported transfer syntax and pixel module, the size limits),
stores the accepted ones sealed (:mod:`service.result_store`) and answers with the Store Instances Response
(PS3.18 Annex I): ``ReferencedSOPSequence`` for the stored, ``FailedSOPSequence`` with a ``FailureReason``
per refused instance; HTTP 200 when all were stored, 202 when some failed, 409 when none was stored (PS3.18
10.5.3). A malformed request is 400, an oversize one 413, a body that is not ``multipart/related`` of
``application/dicom`` 415, an ``Accept`` it cannot satisfy 406; those bodies are Fovea's JSON error shape.
The analysis then runs in :class:`service.dicomweb_worker.AnalysisWorker`; its SR (TID 1500) and Secondary
Capture join the source's study and are what QIDO-RS finds and WADO-RS returns. The received photographs
themselves are not kept once analysed, and are not retrievable. Every request acts for a site (the API key's,
:mod:`service.auth`, which guards ``/dicomweb`` like every route): a site's searches and retrievals see the
results of the instances it sent, and nothing of another site's.

Failure reasons (PS3.18 I.2.2 uses the Storage Service statuses of PS3.4 B.2.3 and the general ones of PS3.7
C): ``0xC000`` cannot understand (not DICOM Part 10, corrupt, truncated); ``0x0122`` SOP class not supported
(not a fundus photograph); ``0xA900`` data set does not match (required UIDs missing or invalid, an instance of
another study than the one in the URL, content the decoder does not support); ``0xA700`` out of resources (too
large, or the analysis queue is full). The decoder's message for each refused part is in a ``Warning: 299``
header (it describes the file, never the patient).

Not implemented (answered 404/405 by the router): bulk data and frame retrieval, rendered resources,
thumbnails, STOW-RS of ``application/dicom+json`` / ``+xml`` with bulk data, QIDO matching on patient
attributes (the index holds no patient data in clear: such keys are ignored with a ``Warning`` header).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.at_rest import data_dir
from service.auth import current_site
from analysis.decode import DecodeLimits, read_dicom_header
from analysis.dicom_header import file_meta_uids
from analysis.received import Analyse, result_datasets
from service.audit import AuditLog
from service.dicomweb_worker import AnalysisWorker, BuildResults
from analysis.errors import (BadRequest, FoveaError, NotAcceptable, NotFound, PayloadTooLarge, UnsupportedDicom,
                            UnsupportedMediaType)
from service.multipart import MultipartLimits, encode_related, new_boundary, parse_media_type, read_related
from service.result_store import InstanceQuery, ResultStore, StoredInstance, is_uid
from service.settings import Settings

log = logging.getLogger("fovea.dicomweb")

DICOM_JSON = "application/dicom+json"

# Failure Reason (0008,1197) values (module docstring).
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122
DATASET_DOES_NOT_MATCH = 0xA900
OUT_OF_RESOURCES = 0xA700

#: QIDO-RS query keys matched against the index (keyword or tag, PS3.18 8.3.4.1), and the field they set.
_MATCH_KEYS = {
    "StudyInstanceUID": "study_instance_uid", "0020000D": "study_instance_uid",
    "SeriesInstanceUID": "series_instance_uid", "0020000E": "series_instance_uid",
    "SOPInstanceUID": "sop_instance_uid", "00080018": "sop_instance_uid",
    "SOPClassUID": "sop_class_uid", "00080016": "sop_class_uid",
    "Modality": "modality", "00080060": "modality", "ModalitiesInStudy": "modality", "00080061": "modality",
}
_UID_FIELDS = {"study_instance_uid", "series_instance_uid", "sop_instance_uid", "sop_class_uid"}
#: Query parameters that are not matching keys (PS3.18 8.3.4); accepted, with fixed behaviour.
_CONTROL_KEYS = {"limit", "offset", "includefield", "fuzzymatching"}
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

# Attributes returned per QIDO-RS level (PS3.18 Tables 10.6.3-3/4/5), copied from a result's metadata.
_STUDY_TAGS = ("00080005", "00080020", "00080030", "00080050", "00080090", "00081030", "00100010", "00100020",
               "00100030", "00100040", "0020000D", "00200010")
_SERIES_TAGS = ("00080005", "00080021", "00080031", "00080060", "0008103E", "0020000D", "0020000E", "00200011")
_INSTANCE_TAGS = ("00080005", "00080016", "00080018", "00080023", "00080033", "00080060", "0020000D",
                  "0020000E", "00200013", "00280010", "00280011", "00280008", "0040A043", "0040A491",
                  "0040A493")


@dataclass(frozen=True)
class _PartOutcome:
    sop_class_uid: str
    sop_instance_uid: str
    failure: int | None = None
    message: str | None = None
    study_instance_uid: str = ""


def create_app(analyze: Analyse, store: ResultStore | Callable[[], ResultStore], *,
               build_results: BuildResults = result_datasets, audit: AuditLog | None = None,
               limits: MultipartLimits | None = None, decode_limits: DecodeLimits | None = None,
               worker_threads: int = 1, start_worker: bool = True,
               open_at_start: Callable[[], bool] = lambda: True,
               site: Callable[[Request], str | None] = lambda request: current_site()) -> Starlette:
    """The DICOMweb app (module docstring). ``analyze``: a parsed instance -> Findings
    (:class:`analysis.received.Analyse`; the service's ``Analyzer.analyze``); ``store``: the result store, or
    a function that opens it (called once, at start-up or first use, so importing the service creates nothing
    on disk); ``build_results``: Findings + source dataset -> SR and SC of every analysed frame (default
    :func:`analysis.received.result_datasets`); ``audit``: the audit trail that records each analysis
    (:mod:`service.dicomweb_worker`); ``limits``: of a STOW-RS body (default: 8 parts of 64 MiB);
    ``decode_limits``: the decoder's limits, for the check at receipt and the parse before the analysis;
    ``start_worker=False`` leaves the analyses to the caller (``app.state.dicomweb.worker.drain()`` in
    tests); ``open_at_start()`` false: the store is opened
    on the first DICOMweb request instead of at start-up (nothing is created on disk for a service that is
    never sent a study); ``site(request)``: the site a request acts for (default: the API key's,
    :func:`service.auth.current_site`): a site finds and retrieves the results of the instances it sent, and
    no other site's (``None``: no scoping)."""
    web = _DicomWeb(analyze, store, build_results=build_results, audit=audit,
                    limits=limits or MultipartLimits(max_parts=8, max_part_bytes=64 << 20,
                                                     max_total_bytes=8 * (64 << 20)),
                    decode_limits=decode_limits or DecodeLimits(), worker_threads=worker_threads,
                    start_worker=start_worker, site=site)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if open_at_start():  # analyses left pending by the last run resume now
            await run_in_threadpool(web.ensure_started)
        try:
            yield
        finally:
            await run_in_threadpool(web.shutdown)

    routes = [
        Route("/studies", web.stow, methods=["POST"]),
        Route("/studies", web.search_studies, methods=["GET"]),
        Route("/series", web.search_series, methods=["GET"]),
        Route("/instances", web.search_instances, methods=["GET"]),
        Route("/studies/{study}", web.stow, methods=["POST"]),
        Route("/studies/{study}", web.retrieve, methods=["GET"]),
        Route("/studies/{study}/metadata", web.metadata, methods=["GET"]),
        Route("/studies/{study}/series", web.search_series, methods=["GET"]),
        Route("/studies/{study}/instances", web.search_instances, methods=["GET"]),
        Route("/studies/{study}/series/{series}", web.retrieve, methods=["GET"]),
        Route("/studies/{study}/series/{series}/metadata", web.metadata, methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances", web.search_instances, methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances/{sop}", web.retrieve, methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances/{sop}/metadata", web.metadata, methods=["GET"]),
        Route("/analyses/{sop}", web.analysis, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.dicomweb = web
    return app


def create_service_app(settings: Settings, analyze: Analyse, audit: AuditLog | None = None) -> Starlette:
    """The app as the BentoML service mounts it: the store under ``<FOVEA_DATA_DIR>/dicomweb`` sealed with
    the installation's key (opened at start-up if it exists, else on first use), the service's upload
    limits (a STOW-RS request carries at most ``max_study_images`` instances of ``max_upload_bytes`` each) and
    its audit trail."""
    return create_app(
        analyze, lambda: ResultStore.open(), audit=audit,
        limits=MultipartLimits(max_parts=settings.max_study_images, max_part_bytes=settings.max_upload_bytes,
                               max_total_bytes=settings.max_upload_bytes * settings.max_study_images),
        decode_limits=DecodeLimits(max_frames=settings.max_frames, max_bytes=settings.max_upload_bytes),
        open_at_start=lambda: (data_dir() / "dicomweb" / "index.sqlite3").exists())


def _error(exc: FoveaError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


def _warning(text: str) -> str:
    """A ``Warning: 299`` value (RFC 7234 5.5, as PS3.18 8.4.3 uses it): one line, printable ASCII."""
    clean = "".join(c if 32 <= ord(c) < 127 and c != '"' else " " for c in text)[:300]
    return f'299 fovea "{clean}"'


def _base_url(request: Request) -> str:
    """This app's URL (scheme, host and mount path) as the client addressed it."""
    return f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}"


def _instance_url(base: str, row: StoredInstance) -> str:
    return (f"{base}/studies/{row.study_instance_uid}/series/{row.series_instance_uid}"
            f"/instances/{row.sop_instance_uid}")


class _DicomWeb:
    """The handlers and their shared state (see :func:`create_app`)."""

    def __init__(self, analyze: Analyse, store: ResultStore | Callable[[], ResultStore], *,
                 build_results: BuildResults, audit: AuditLog | None, limits: MultipartLimits,
                 decode_limits: DecodeLimits, worker_threads: int, start_worker: bool,
                 site: Callable[[Request], str | None]) -> None:
        self.site_of = site
        self._analyze = analyze
        self._store_source = store
        self._build_results = build_results
        self._audit = audit
        self.limits = limits
        self.decode_limits = decode_limits
        self._worker_threads = worker_threads
        self._start_worker = start_worker
        self._store: ResultStore | None = store if isinstance(store, ResultStore) else None
        self._worker: AnalysisWorker | None = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def store(self) -> ResultStore:
        self.ensure_started()
        assert self._store is not None
        return self._store

    @property
    def worker(self) -> AnalysisWorker:
        self.ensure_started()
        assert self._worker is not None
        return self._worker

    def ensure_started(self) -> None:
        """Open the store and start the worker, once (at start-up, or on the first request where the server
        runs no lifespan)."""
        with self._lock:
            if self._worker is not None:
                return
            if self._store is None:
                source = self._store_source
                assert callable(source)
                self._store = source()
            self._worker = AnalysisWorker(self._store, self._analyze, self._build_results,
                                          limits=self.decode_limits, audit=self._audit,
                                          threads=self._worker_threads)
            if self._start_worker:
                self._worker.start()

    def shutdown(self) -> None:
        """Stop the worker threads (after their current analysis) and close a store this app opened."""
        with self._lock:
            if self._worker is not None:
                self._worker.stop()
            if self._store is not None and not isinstance(self._store_source, ResultStore):
                self._store.close()
                self._store = None
            self._worker = None

    # -- STOW-RS ---------------------------------------------------------------------------------------------

    async def stow(self, request: Request) -> Response:
        """PS3.18 10.5 Store Instances."""
        media, params = parse_media_type(request.headers.get("content-type"))
        part_type = params.get("type", "application/dicom").lower()
        if media != "multipart/related" or part_type != "application/dicom":
            return _error(UnsupportedMediaType(
                'STOW-RS takes Content-Type: multipart/related; type="application/dicom" (DICOM Part 10 '
                f"instances, one per part); got {media or 'none'}"
                + (f' with type="{part_type[:40]}"' if media == "multipart/related" else "")))
        if not _acceptable(request.headers.get("accept"), (DICOM_JSON, "application/json")):
            return _error(NotAcceptable("the Store Instances Response is available as application/dicom+json"))
        study = request.path_params.get("study")
        if study is not None and not is_uid(study):
            return _error(BadRequest("the Study Instance UID in the URL is not a valid UID"))
        try:
            parts = await read_related(request.stream(), params.get("boundary", ""), self.limits)
        except FoveaError as exc:
            return _error(exc)
        if not parts:
            return _error(BadRequest("the multipart body has no parts: send at least one DICOM instance"))
        outcomes = await run_in_threadpool(self._store_parts, [(p.media_type, p.data) for p in parts], study,
                                           self.site_of(request))
        return self._store_response(request, outcomes)

    def _store_parts(self, parts: Sequence[tuple[str, bytes]], study: str | None, site: str | None
                     ) -> list[_PartOutcome]:
        outcomes = [self._store_part(media, data, study, site) for media, data in parts]
        if any(o.failure is None for o in outcomes):
            self.worker.notify()
        return outcomes

    def _store_part(self, media: str, data: bytes, study: str | None, site: str | None) -> _PartOutcome:
        if media not in ("", "application/dicom"):
            return _PartOutcome(*_peek_uids(data), CANNOT_UNDERSTAND, f"a part of type {media[:40]} is not "
                                "application/dicom")
        try:
            ds = read_dicom_header(data, limits=self.decode_limits)
        except FoveaError as exc:
            return _PartOutcome(*_peek_uids(data), _failure_reason(exc), exc.message)
        sop_class, sop = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
        ids = {k: str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
        bad = [k for k, v in ids.items() if not is_uid(v)]
        if bad:
            return _PartOutcome(sop_class if is_uid(sop_class) else "", sop if is_uid(sop) else "",
                                DATASET_DOES_NOT_MATCH, f"{', '.join(bad)} missing or not a valid UID")
        if study is not None and ids["StudyInstanceUID"] != study:
            return _PartOutcome(sop_class, sop, DATASET_DOES_NOT_MATCH,
                                "the instance belongs to another study than the one in the URL")
        outcome = self.store.receive(data, ds, site=site)
        if outcome == "busy":
            return _PartOutcome(sop_class, sop, OUT_OF_RESOURCES,
                                f"{self.store.max_pending} analyses are waiting; send the instance again later")
        return _PartOutcome(sop_class, sop, study_instance_uid=ids["StudyInstanceUID"])

    def _store_response(self, request: Request, outcomes: list[_PartOutcome]) -> Response:
        base = _base_url(request)
        stored = [o for o in outcomes if o.failure is None]
        failed = [o for o in outcomes if o.failure is not None]
        resp = Dataset()
        studies = {str(request.path_params.get("study", ""))} - {""} or {o.study_instance_uid for o in stored}
        # Retrieve URL (0008,1190), type 2: the study where the results will appear, when there is one.
        resp.RetrieveURL = f"{base}/studies/{next(iter(studies))}" if len(studies) == 1 else ""
        if failed:
            resp.FailedSOPSequence = [_reference(o.sop_class_uid, o.sop_instance_uid, FailureReason=o.failure)
                                      for o in failed]
        if stored:
            # Retrieve URL of each received instance, type 2, is empty: Fovea does not keep the photographs;
            # their results are found with QIDO-RS in the same study.
            resp.ReferencedSOPSequence = [_reference(o.sop_class_uid, o.sop_instance_uid, RetrieveURL="")
                                          for o in stored]
        status = 200 if not failed else 202 if stored else 409
        headers = {}
        warnings = [_warning(f"part {n}: {o.message}") for n, o in enumerate(outcomes, 1) if o.failure is not None]
        if warnings:
            headers["Warning"] = ", ".join(warnings)
        log.info("STOW-RS: %d stored, %d failed", len(stored), len(failed))
        return JSONResponse(resp.to_json_dict(), status_code=status, headers=headers, media_type=DICOM_JSON)

    # -- QIDO-RS ---------------------------------------------------------------------------------------------

    def _query(self, request: Request) -> tuple[InstanceQuery, int, int, list[str]]:
        """The matching keys, limit, offset and ignored keys of a QIDO-RS request (path UIDs included)."""
        fields: dict[str, list[str]] = {}
        ignored: list[str] = []
        limit, offset = DEFAULT_LIMIT, 0
        for key, value in request.query_params.multi_items():
            if key in ("limit", "offset"):
                if not value.isdigit():
                    raise BadRequest(f"{key} must be a non-negative integer")
                if key == "limit":
                    limit = min(int(value), MAX_LIMIT)
                else:
                    offset = int(value)
                continue
            if key in _CONTROL_KEYS:
                continue  # includefield / fuzzymatching: the attributes returned are fixed; matching is exact
            name = _MATCH_KEYS.get(key) or _MATCH_KEYS.get(key.upper())
            if name is None:
                ignored.append(key[:64])
                continue
            values = [v.strip() for v in value.replace("\\", ",").split(",") if v.strip()]
            if values == ["*"] or not values:
                continue  # universal matching
            if name in _UID_FIELDS and not all(is_uid(v) for v in values):
                raise BadRequest(f"{key} must be a UID or a comma-separated list of UIDs")
            fields.setdefault(name, []).extend(v.upper() if name == "modality" else v for v in values)
        for param, name in (("study", "study_instance_uid"), ("series", "series_instance_uid")):
            if param in request.path_params:
                uid = request.path_params[param]
                if not is_uid(uid):
                    raise BadRequest(f"the {param} UID in the URL is not a valid UID")
                prior = fields.get(name)
                fields[name] = [uid] if prior is None or uid in prior else []
        return InstanceQuery(**fields), limit, offset, ignored

    def _qido_response(self, body: list[dict[str, Any]], more: bool, ignored: list[str]) -> Response:
        headers = {}
        warnings = []
        if ignored:
            warnings.append(_warning("query keys not supported, ignored: " + ", ".join(ignored)))
        if more:
            warnings.append(_warning("there are additional results that can be requested"))  # PS3.18 8.3.4.4
        if warnings:
            headers["Warning"] = ", ".join(warnings)
        return JSONResponse(body, headers=headers, media_type=DICOM_JSON)

    async def _search(self, request: Request, level: str) -> Response:
        if not _acceptable(request.headers.get("accept"), (DICOM_JSON, "application/json")):
            return _error(NotAcceptable("QIDO-RS results are available as application/dicom+json"))
        try:
            query, limit, offset, ignored = self._query(request)
        except FoveaError as exc:
            return _error(exc)
        body, more = await run_in_threadpool(self._search_sync, level, query, limit, offset, _base_url(request),
                                             self.site_of(request))
        return self._qido_response(body, more, ignored)

    def _search_sync(self, level: str, query: InstanceQuery, limit: int, offset: int, base: str,
                     site: str | None) -> tuple[list[dict[str, Any]], bool]:
        store = self.store
        if level == "instances":
            rows = store.find(query, limit=limit + 1, offset=offset, site=site)
            return [self._instance_json(r, base) for r in rows[:limit]], len(rows) > limit
        matches = store.find(query, site=site)
        key = (lambda r: r.study_instance_uid) if level == "studies" else (
            lambda r: (r.study_instance_uid, r.series_instance_uid))
        groups: dict[Any, StoredInstance] = {}
        for r in matches:
            groups.setdefault(key(r), r)
        page = list(groups.values())[offset:offset + limit]
        more = len(groups) > offset + limit
        if level == "studies":
            return [self._study_json(r, base, site) for r in page], more
        return [self._series_json(r, base, site) for r in page], more

    def _pick(self, row: StoredInstance, tags: Sequence[str]) -> dict[str, Any]:
        meta = self.store.metadata(row.sop_instance_uid)
        return {t: meta[t] for t in tags if t in meta}

    def _study_json(self, row: StoredInstance, base: str, site: str | None) -> dict[str, Any]:
        every = self.store.find(InstanceQuery(study_instance_uid=[row.study_instance_uid]), site=site)
        out = self._pick(row, _STUDY_TAGS)
        out["00080061"] = {"vr": "CS", "Value": sorted({r.modality for r in every if r.modality})}
        out["00201206"] = {"vr": "IS", "Value": [len({r.series_instance_uid for r in every})]}
        out["00201208"] = {"vr": "IS", "Value": [len(every)]}
        out["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{row.study_instance_uid}"]}
        return dict(sorted(out.items()))

    def _series_json(self, row: StoredInstance, base: str, site: str | None) -> dict[str, Any]:
        every = self.store.find(InstanceQuery(study_instance_uid=[row.study_instance_uid],
                                              series_instance_uid=[row.series_instance_uid]), site=site)
        out = self._pick(row, _SERIES_TAGS)
        out["00201209"] = {"vr": "IS", "Value": [len(every)]}
        out["00081190"] = {"vr": "UR", "Value": [
            f"{base}/studies/{row.study_instance_uid}/series/{row.series_instance_uid}"]}
        return dict(sorted(out.items()))

    def _instance_json(self, row: StoredInstance, base: str) -> dict[str, Any]:
        out = self._pick(row, _INSTANCE_TAGS)
        out["00081190"] = {"vr": "UR", "Value": [_instance_url(base, row)]}
        return dict(sorted(out.items()))

    async def search_studies(self, request: Request) -> Response:
        """PS3.18 10.6 Search for studies (that hold Fovea results)."""
        return await self._search(request, "studies")

    async def search_series(self, request: Request) -> Response:
        """PS3.18 10.6 Search for series (of a study, or all)."""
        return await self._search(request, "series")

    async def search_instances(self, request: Request) -> Response:
        """PS3.18 10.6 Search for instances (of a series, a study, or all)."""
        return await self._search(request, "instances")

    # -- WADO-RS ---------------------------------------------------------------------------------------------

    def _resolve(self, request: Request, site: str | None) -> list[StoredInstance]:
        """The stored results the WADO-RS path names; :class:`NotFound` when there are none."""
        names = (("study", "study_instance_uid"), ("series", "series_instance_uid"), ("sop", "sop_instance_uid"))
        fields = {}
        for param, name in names:
            if param in request.path_params:
                if not is_uid(request.path_params[param]):
                    raise BadRequest(f"the {param} UID in the URL is not a valid UID")
                fields[name] = [request.path_params[param]]
        rows = self.store.find(InstanceQuery(**fields), site=site)
        if not rows:
            raise NotFound("no Fovea result is stored under this URL (results appear once the analysis is done: "
                           "see /dicomweb/analyses/{SOPInstanceUID})")
        return rows

    async def retrieve(self, request: Request) -> Response:
        """PS3.18 10.4 Retrieve instances (study, series or instance) as DICOM Part 10, multipart/related."""
        try:
            rows = await run_in_threadpool(self._resolve, request, self.site_of(request))
        except FoveaError as exc:
            return _error(exc)
        if not _acceptable_dicom(request.headers.get("accept"), {r.transfer_syntax_uid for r in rows}):
            return _error(NotAcceptable(
                'instances are available as multipart/related; type="application/dicom" in their stored transfer '
                "syntax: " + ", ".join(sorted({r.transfer_syntax_uid for r in rows}))))
        parts = await run_in_threadpool(lambda: [
            (f"application/dicom; transfer-syntax={r.transfer_syntax_uid}",
             self.store.instance_bytes(r.sop_instance_uid))
            for r in rows])
        boundary = new_boundary()
        return Response(encode_related(parts, boundary),
                        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')

    async def metadata(self, request: Request) -> Response:
        """PS3.18 10.4 Retrieve metadata (DICOM JSON of every instance, without pixel data)."""
        if not _acceptable(request.headers.get("accept"), (DICOM_JSON, "application/json")):
            return _error(NotAcceptable("metadata is available as application/dicom+json"))
        try:
            rows = await run_in_threadpool(self._resolve, request, self.site_of(request))
        except FoveaError as exc:
            return _error(exc)
        body = await run_in_threadpool(lambda: [self.store.metadata(r.sop_instance_uid) for r in rows])
        return JSONResponse(body, media_type=DICOM_JSON)

    # -- analysis state ----------------------------------------------------------------------------------------

    async def analysis(self, request: Request) -> Response:
        """The analysis of a received instance: ``state`` (pending, running, done, failed), the error of a
        failed one, and the results (UIDs, modality, WADO-RS URL) of a done one. 202 while pending or running
        (poll again), 200 once it ended, 404 for an instance Fovea never received."""
        sop = request.path_params["sop"]
        if not is_uid(sop):
            return _error(BadRequest("the SOP Instance UID in the URL is not a valid UID"))
        state = await run_in_threadpool(lambda: self.store.analysis(sop, site=self.site_of(request)))
        if state is None:
            return _error(NotFound("Fovea has not received an instance with this SOP Instance UID"))
        base = _base_url(request)
        results = await run_in_threadpool(self.store.results_of, sop)
        body: dict[str, Any] = {
            "sop_instance_uid": state.sop_instance_uid, "study_instance_uid": state.study_instance_uid,
            "state": state.state, "attempts": state.attempts,
            "error": ({"code": state.error_code, "message": state.error_message} if state.state == "failed"
                      else None),
            "results": [{"modality": r.modality, "sop_class_uid": r.sop_class_uid,
                         "series_instance_uid": r.series_instance_uid, "sop_instance_uid": r.sop_instance_uid,
                         "url": _instance_url(base, r)} for r in results] if state.state == "done" else [],
        }
        return JSONResponse(body, status_code=202 if state.state in ("pending", "running") else 200)


def _reference(sop_class: str, sop: str, **extra: Any) -> Dataset:
    """An item of the SOP Instance Reference Macro (PS3.3 Table 10-11) plus ``extra`` attributes."""
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop
    for keyword, value in extra.items():
        setattr(item, keyword, value)
    return item


def _failure_reason(exc: FoveaError) -> int:
    """The Failure Reason (0008,1197) of a part the decoder refused."""
    if isinstance(exc, PayloadTooLarge):
        return OUT_OF_RESOURCES
    if isinstance(exc, UnsupportedDicom) and "SOP class" in exc.message:
        return SOP_CLASS_NOT_SUPPORTED
    if isinstance(exc, UnsupportedDicom) or exc.status == 422:
        return DATASET_DOES_NOT_MATCH
    return CANNOT_UNDERSTAND


def _peek_uids(data: bytes) -> tuple[str, str]:
    """The SOP Class and Instance UIDs of a refused part, from its file meta (group 0002 only: a refused part
    is never parsed further, it may be a deflate bomb), if it is DICOM enough to have them; ``("", "")``
    otherwise (the Failed SOP Sequence item then carries them empty)."""
    sop_class, sop = file_meta_uids(data)
    return (sop_class if is_uid(sop_class) else "", sop if is_uid(sop) else "")


def _media_ranges(accept: str | None) -> list[tuple[str, dict[str, str]]]:
    return [parse_media_type(r) for r in (accept or "").split(",") if r.strip()]


def _acceptable(accept: str | None, offered: Sequence[str]) -> bool:
    """Whether an ``Accept`` header (absent: anything) admits one of the ``offered`` media types."""
    ranges = _media_ranges(accept)
    if not ranges:
        return True
    for media, params in ranges:
        if params.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        if media in ("*/*", "application/*") or media in offered:
            return True
    return False


def _acceptable_dicom(accept: str | None, stored_syntaxes: set[str]) -> bool:
    """Whether ``Accept`` admits ``multipart/related; type="application/dicom"`` in the transfer syntaxes the
    instances are stored in. Fovea does not transcode: a range that names another transfer syntax is not
    satisfiable; one without ``transfer-syntax`` gets the stored one, named in each part's Content-Type."""
    ranges = _media_ranges(accept)
    if not ranges:
        return True
    for media, params in ranges:
        if media in ("*/*", "multipart/*"):
            return True
        if media != "multipart/related" or params.get("type", "application/dicom").lower() not in (
                "application/dicom", "application/*"):
            continue
        ts = params.get("transfer-syntax")
        if ts is None or ts == "*" or stored_syntaxes <= {ts}:
            return True
    return False
