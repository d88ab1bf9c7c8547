"""Render: intent + cluster state (+ the previous snapshot) -> the next snapshot. No I/O."""

from .engine import Renderer, RenderIssue, RenderResult, render

__all__ = ["Renderer", "RenderIssue", "RenderResult", "render"]
