"""Realistic synthetic cheque-amount, zip-code and digit-string fields from MNIST digits.

Seeded and fast enough to train a sequence reader on the fly: ballpoint strokes thinned from MNIST
glyphs, written with touching and tied digits, separators and trailing marks, on security-patterned
paper with printed rules, scanned and JPEG-compressed. Every trait comes in named families, some held
out of training (``FAMILIES``). See docs/docgen.md.
"""

from digits.model.docgen.core import KINDS, Document, documents, generate
from digits.model.docgen.families import FAMILIES
from digits.model.docgen.sheet import contact_sheet

__all__ = [
    "FAMILIES",
    "KINDS",
    "Document",
    "contact_sheet",
    "documents",
    "generate",
]
