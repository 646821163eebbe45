"""A griffe extension: the package's reST markup, read as Markdown by mkdocstrings.

The docstrings are written for ``help()`` and Sphinx alike: ``:class:`Task```
roles and ``::`` before literal blocks. mkdocstrings renders them as Markdown,
where a role would show up verbatim. This turns each role into a link to the
public name it means (``grokimagine_async.Task``, not the private module it
lives in), or into plain code when that name is not in the API reference, so
no link is ever broken; and ``text::`` into ``text:``.

It also shows an attribute set from a parameter of the same name in
``__init__`` (``self.url = url``) with that parameter's type, rather than as
``url = url``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROOTS = ("grokimagine_async", "grokimagine_async.simulator")

_ROLE = re.compile(r":(?:py:)?(class|meth|func|attr|exc|mod|data|obj):`([^`]+)`")
_TITLED = re.compile(r"^(.*?)\s*<([^>]+)>$")


class RstRoles(griffe.Extension):
    """Rewrites reST roles in every docstring of the package into cross-references."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.path != ROOTS[0]:
            return
        public: dict[str, list[str]] = {}  # canonical path -> public paths
        known: set[str] = set()  # every public path the reference renders
        for root in ROOTS:
            module = pkg if root == pkg.path else pkg.get_member(root.split(".", 1)[1])
            for name in module.exports or ():
                target = module.get_member(str(name))
                final = target.final_target if isinstance(target, griffe.Alias) else target
                path = f"{root}.{name}"
                public.setdefault(final.path, []).append(path)
                known.add(path)
                if isinstance(final, griffe.Class):
                    known.update(
                        f"{path}.{member}" for member in final.all_members if _shown(member)
                    )
        for obj in _walk(pkg):
            if isinstance(obj, griffe.Attribute):
                _from_parameter(obj)
            if obj.docstring is not None:
                scopes = _scopes(obj, public)
                obj.docstring.value = _convert(obj.docstring.value, scopes, public, known)


def _from_parameter(attr: griffe.Attribute) -> None:
    """``self.url = url`` in ``__init__``: show ``url: str``, not ``url = url``."""
    init = attr.parent.members.get("__init__") if attr.parent is not None else None
    if not isinstance(init, griffe.Function) or str(attr.value) != attr.name:
        return
    if attr.name in init.parameters:
        attr.value = None
        if attr.annotation is None:
            attr.annotation = init.parameters[attr.name].annotation


def _shown(name: str) -> bool:
    return not name.startswith("_") or name == "__call__"


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not isinstance(member, griffe.Alias):
            found.extend(_walk(member))
    return found


def _scopes(obj: griffe.Object, public: dict[str, list[str]]) -> list[str]:
    """Public paths of the classes a bare name in ``obj``'s docstring may belong to.

    The class itself first, then any public class that inherits from it (a
    method of a private base is documented on the public subclass).
    """
    scopes: list[str] = []
    parent: griffe.Object | None = obj
    while parent is not None:
        if isinstance(parent, griffe.Class):
            scopes.extend(public.get(parent.path, ()))
            for canonical, paths in public.items():
                cls = _class(parent, canonical)
                if cls is not None and parent.path in {c.path for c in _mro(cls)}:
                    scopes.extend(paths)
        parent = parent.parent
    return scopes


def _class(anchor: griffe.Object, path: str) -> griffe.Class | None:
    try:
        found = anchor.package.modules_collection[path]
    except KeyError:
        return None
    return found if isinstance(found, griffe.Class) else None


def _mro(cls: griffe.Class) -> list[griffe.Class]:
    try:
        return cls.mro()
    except ValueError:  # an unresolvable base: no inheritance to follow
        return []


def _resolve(
    target: str, scopes: list[str], public: dict[str, list[str]], known: set[str]
) -> str | None:
    target = target.lstrip("~").removesuffix("()")
    if target in known:
        return target
    # A private path: its public name, or a member of a public class.
    head, _, tail = target.rpartition(".")
    for canonical, paths in ((target, public.get(target, [])), (head, public.get(head, []))):
        for path in paths:
            candidate = path if canonical == target else f"{path}.{tail}"
            if candidate in known:
                return candidate
    for scope in (*scopes, *ROOTS):
        if f"{scope}.{target}" in known:
            return f"{scope}.{target}"
    return None


def _convert(text: str, scopes: list[str], public: dict[str, list[str]], known: set[str]) -> str:
    def role(match: re.Match[str]) -> str:
        kind, body = match.groups()
        titled = _TITLED.match(body)
        if titled:
            title, target = titled.groups()
        else:
            target = body
            title = body.rsplit(".", 1)[-1] if body.startswith("~") else body
            if kind in ("meth", "func") and not title.endswith(")"):
                title += "()"
        resolved = _resolve(target, scopes, public, known)
        return f"[`{title}`][{resolved}]" if resolved else f"`{title}`"

    lines = []
    for line in _ROLE.sub(role, text).split("\n"):
        stripped = line.rstrip()
        if stripped.endswith("::"):
            # reST's literal-block marker: the indented block below is already code.
            line = stripped[:-2].rstrip() + (":" if stripped.strip() != "::" else "")
        lines.append(line)
    return "\n".join(lines)
