"""The image-analysis core: decode, field and quality, gradability, the pipeline, rendering, findings and
studies, results as DICOM SR/SC and FHIR, ONNX Runtime sessions.

No HTTP and no torch: :mod:`service` adapts this core to its doors (HTTP, DICOMweb, the DIMSE gateway) and
:mod:`training` and :mod:`bench` use it directly. Imports point one way: ``service -> analysis -> models``.
"""
