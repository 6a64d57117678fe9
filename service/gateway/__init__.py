"""The DIMSE gateway: a DICOM C-STORE SCP in front of Fovea, with store-and-forward.

A PACS (or a fundus camera) sends photographs to the gateway's AE title (``FOVEA``, port 11112) with C-STORE;
the gateway writes each accepted instance durably to its queue (sealed at rest, :mod:`service.at_rest`) before
it answers *Success*, analyses it through the Fovea service's HTTP API (``POST /analyze``), builds the DICOM
results (TID 1500 SR + Secondary Capture overlay, :mod:`analysis.dicom_out`) and C-STOREs them to a configured
destination (or sends them with STOW-RS). Failures are retried with exponential backoff; an item that keeps
failing moves to a dead-letter folder with its reason. A restart resumes the queue.

Modules: :mod:`.queue` (the durable queue and its states), :mod:`.scp` (the DICOM listener),
:mod:`.analyse` (the HTTP client of the service), :mod:`.forward` (DIMSE and STOW-RS senders),
:mod:`.worker` (the store-and-forward loop), :mod:`.__main__` (the command line).
"""
