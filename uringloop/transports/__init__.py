"""asyncio transports whose I/O is io_uring operations, one module per kind."""

from .stream import StreamTransport

__all__ = ["StreamTransport"]
