"""uringloop: a drop-in asyncio event loop whose socket I/O goes through Linux io_uring.

    import uringloop
    uringloop.run(main())            # or: uringloop.install(); asyncio.run(main())

Stream transports also offer ``await transport.write_zerocopy(buf)``, which sends with
``IORING_OP_SEND_ZC`` and resolves once the kernel no longer needs ``buf``.
"""

from __future__ import annotations

from ._caps import features
from .errors import UnsupportedError
from .loop import Loop
from .policy import EventLoopPolicy, install, new_event_loop, run
from .zcpool import ZeroCopyBuffer, ZeroCopyBufferPool
from .zerocopy import ZeroCopyGeneration, ZeroCopyGenerationResult, ZeroCopyResult

__all__ = [
    "Loop", "EventLoopPolicy", "UnsupportedError", "ZeroCopyResult", "ZeroCopyGeneration",
    "ZeroCopyGenerationResult", "ZeroCopyBuffer", "ZeroCopyBufferPool",
    "features", "install", "new_event_loop", "run",
]
__version__ = "0.1.0"
