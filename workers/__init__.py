"""Workers: process stored events with the team's handler plugins.

Handler modules only need ``from workers import on, Event``.
"""

from .event import Event
from .registry import HandlerRegistry, on, registry

__all__ = ["Event", "HandlerRegistry", "on", "registry"]
