"""Tree-sitter grammars and what each language calls its scopes, imports and comments.

A registry dict from LSP `languageId` (or file extension) to a `LangSpec`; anything not in it is
plain text. Grammars load lazily, once, and a grammar that fails to load also means plain text.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LangSpec:
    """What the context builder and the edit actions need to know about one language.

    Attributes:
        name: registry name.
        module, attr: the grammar wheel's module and its language function.
        comment: line comment leader.
        opener: text that ends a block header (":" in Python, "{" elsewhere).
        scopes: node types of definitions (functions, classes, ...): enclosing scopes, sibling
            signatures, the scope of "Fill holes", cross-file definitions.
        imports: node types kept in clipped context.
    """

    name: str
    module: str
    attr: str = "language"
    comment: str = "//"
    opener: str = "{"
    scopes: frozenset[str] = frozenset()
    imports: frozenset[str] = frozenset()


_JS_SCOPES = {"function_declaration", "function_expression", "arrow_function", "method_definition",
              "class_declaration", "class", "generator_function_declaration"}
_C_SCOPES = {"function_definition", "struct_specifier", "enum_specifier"}

SPECS: dict[str, LangSpec] = {
    "python": LangSpec("python", "tree_sitter_python", comment="#", opener=":",
                       scopes=frozenset({"function_definition", "class_definition"}),
                       imports=frozenset({"import_statement", "import_from_statement", "future_import_statement"})),
    "javascript": LangSpec("javascript", "tree_sitter_javascript", scopes=frozenset(_JS_SCOPES),
                           imports=frozenset({"import_statement"})),
    "typescript": LangSpec("typescript", "tree_sitter_typescript", attr="language_typescript",
                           scopes=frozenset(_JS_SCOPES | {"interface_declaration", "abstract_class_declaration"}),
                           imports=frozenset({"import_statement"})),
    "typescriptreact": LangSpec("typescriptreact", "tree_sitter_typescript", attr="language_tsx",
                                scopes=frozenset(_JS_SCOPES | {"interface_declaration"}),
                                imports=frozenset({"import_statement"})),
    "go": LangSpec("go", "tree_sitter_go",
                   scopes=frozenset({"function_declaration", "method_declaration", "func_literal", "type_declaration"}),
                   imports=frozenset({"import_declaration", "package_clause"})),
    "rust": LangSpec("rust", "tree_sitter_rust",
                     scopes=frozenset({"function_item", "impl_item", "trait_item", "struct_item", "enum_item",
                                       "mod_item", "closure_expression"}),
                     imports=frozenset({"use_declaration", "extern_crate_declaration"})),
    "c": LangSpec("c", "tree_sitter_c", scopes=frozenset(_C_SCOPES), imports=frozenset({"preproc_include"})),
    "cpp": LangSpec("cpp", "tree_sitter_cpp",
                    scopes=frozenset(_C_SCOPES | {"class_specifier", "namespace_definition", "lambda_expression"}),
                    imports=frozenset({"preproc_include", "using_declaration"})),
    "java": LangSpec("java", "tree_sitter_java",
                     scopes=frozenset({"method_declaration", "constructor_declaration", "class_declaration",
                                       "interface_declaration", "enum_declaration", "lambda_expression"}),
                     imports=frozenset({"import_declaration", "package_declaration"})),
}
ALIASES = {"javascriptreact": "javascript", "jsx": "javascript", "js": "javascript", "ts": "typescript",
           "tsx": "typescriptreact", "py": "python", "python3": "python", "golang": "go", "rs": "rust",
           "h": "c", "cc": "cpp", "cxx": "cpp", "hpp": "cpp", "c++": "cpp", "mjs": "javascript",
           "cjs": "javascript"}


def spec_for(language_id: str, uri: str = "") -> LangSpec | None:
    """The spec of an LSP languageId, else of the URI's extension; None = plain text."""
    for key in (language_id.lower(), os.path.splitext(uri)[1].lstrip(".").lower()):
        key = ALIASES.get(key, key)
        if key in SPECS:
            return SPECS[key]
    return None


@cache
def parser_for(name: str) -> Any | None:
    """A tree-sitter Parser for a registered language, or None if its grammar cannot load."""
    spec = SPECS[name]
    try:
        import tree_sitter

        module = importlib.import_module(spec.module)
        return tree_sitter.Parser(tree_sitter.Language(getattr(module, spec.attr)()))
    except Exception as exc:  # a broken or missing grammar wheel degrades to plain text
        log.warning("grammar %s unavailable: %s", name, exc)
        return None


def comment_prefix(spec: LangSpec | None) -> str:
    return spec.comment if spec else "#"
