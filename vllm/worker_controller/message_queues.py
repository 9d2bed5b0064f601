# SPDX-License-Identifier: Apache-2.0
"""Closing vLLM's shared-memory ``MessageQueue`` in a process that outlives it.

Upstream's processes exit after their last queue; pooled ones go on, so
their queues must be closed, not left to the garbage collector.
"""

from vllm.distributed.device_communicators.shm_broadcast import MessageQueue


def close_message_queue(mq: MessageQueue) -> None:
    """Shuts a ``MessageQueue`` and closes its ZMQ sockets at once.

    Upstream's ``shutdown`` only wakes readers; its sockets close when the
    queue is garbage-collected, with ZMQ's default infinite linger, so a
    message a departed peer never took blocks that collection (and the
    thread that happened to trigger it) forever.
    """
    mq.shutdown()
    for sock in (mq.local_socket, mq.remote_socket):
        if sock is not None:
            sock.close(linger=0)
