"""Typed application state keys, shared by the app factory and the handlers."""

from __future__ import annotations

from aiohttp import web

from proxy.backend import Upstream
from proxy.config import Config
from proxy.discovery import Discovery
from proxy.registry import Registry
from proxy.streaming import Clock

CONFIG = web.AppKey("config", Config)
REGISTRY = web.AppKey("registry", Registry)
UPSTREAM = web.AppKey("upstream", Upstream)
DISCOVERY = web.AppKey("discovery", Discovery)
CLOCK = web.AppKey("clock", Clock)
