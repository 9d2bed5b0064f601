# SPDX-License-Identifier: Apache-2.0
"""vLLM's shared-memory ``MessageQueue`` in processes that outlive it.

Upstream's processes exit after their last queue; pooled ones go on, so
their queues must be closed, not left to the garbage collector, and a
ready barrier whose peer never comes must end instead of blocking the
process for good.
"""

from multiprocessing import shared_memory

import zmq

from vllm.distributed.device_communicators.shm_broadcast import Handle, MessageQueue


def wait_until_ready(mq: MessageQueue, timeout_s: float, what: str) -> None:
    """Upstream's ready barrier, failing with ``TimeoutError`` after
    ``timeout_s`` (its own waits for the peer's socket have no limit)."""
    sock = mq.local_socket
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    try:
        mq.wait_until_ready()
    except zmq.Again:
        raise TimeoutError(f"{what} did not attach within {timeout_s:.0f} s") from None
    finally:
        sock.setsockopt(zmq.RCVTIMEO, -1)


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


def unlink_queue_memory(handle: Handle) -> bool:
    """Removes the shared memory of a ``MessageQueue`` whose creator died.

    Its creator unlinks it when the queue is collected; a process killed
    first leaves it in /dev/shm (hundreds of MiB for an engine's queues)
    until the server stops. Unlinking a segment that live readers still map
    is safe: their mapping stays until they close it. False if it is gone.
    Relies on: ``Handle.buffer_handle`` ending with the segment's name.
    """
    if handle.buffer_handle is None:
        return False
    try:
        memory = shared_memory.SharedMemory(name=handle.buffer_handle[-1])
    except FileNotFoundError:
        return False
    memory.close()
    memory.unlink()  # also drops the creator's resource-tracker entry
    return True
