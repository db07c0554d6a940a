"""Batches: a burst of up to 10,000 jobs accepted as one request.

Owns the items of a batch before they have records (``items``: ids, chunks, the SUBMITTING view
of an unrecorded item), the accept that validates and chunks a burst (``accept``), the records
of items leaving SUBMITTING and the end of a batch (``outcomes``), and the job worker's
submission of chunks, one head-node command for one or several chunks (``dispatch``).

Import from the modules (the package re-exports nothing: ``requests.models`` needs
``batches.models`` while ``batches.items`` needs ``requests.models``).
"""
