# SPDX-License-Identifier: Apache-2.0
"""Peer weight loading: a model's weights copied from an engine that holds
the same checkpoint, instead of read from disk.

Source side (a pooled worker): ``loaded_state`` (what can be sent),
``export`` (publishing it: ``shm``, ``broadcast``, CUDA IPC). Target side:
``loader`` (the ``wc_peer`` load format, a vLLM model-loader plugin),
``client`` (asking a server for a descriptor), ``verify`` (the checks).
Both: ``descriptor``, ``checksum``. Light to import: the plugin entry point
(``vllm.worker_controller.plugin``) reads ``PEER_LOAD_FORMAT`` from here.
"""

PEER_LOAD_FORMAT = "wc_peer"
"""``--load-format`` of the peer loader."""
