"""The ``sepconv`` sub-commands, one module each; every module has ``register(app)`` adding its command.

``sepconv.cli`` registers :data:`COMMANDS` in this order (the order ``sepconv --help`` lists them). Heavy imports
(onnx, the server) happen inside the commands, so ``sepconv --help`` stays fast.
"""

from __future__ import annotations

from sepconv.commands import classify, export, profile, serve, summary, sweep

COMMANDS = (summary, export, serve, profile, sweep, classify)
