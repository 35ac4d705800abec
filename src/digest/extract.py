"""Pure text work on articles: canonical URLs, fingerprints, sanitizing, boilerplate, summaries.

Nothing here reads files, the network or the clock, so every rule is tested with tables and
golden files. Boilerplate is trimmed by general rules (headings like "Related" or "About the
author", newsletter and share prompts, cookie notices, author bios), never by one site's phrases.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import re
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote_plus, urljoin, urlsplit, urlunsplit

import lxml.html
import nh3

_TRACKING_PARAMS = frozenset(
    {
        "fbclid", "gclid", "dclid", "gclsrc", "msclkid", "yclid", "twclid", "igshid", "mc_cid",
        "mc_eid", "ref", "ref_src", "ref_url", "_hsenc", "_hsmi", "mkt_tok", "oly_anon_id",
        "oly_enc_id", "vero_id", "vero_conv", "wickedid", "rb_clickid", "s_cid", "cmpid",
        "ncid", "sr_share", "spm", "__s", "_ga", "_gl", "hsctatracking", "ito", "soc_src",
        "soc_trk",
    }
)  # fmt: skip
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _is_tracking_param(key: str) -> bool:
    key = key.lower()
    return key.startswith(("utm_", "pk_", "mtm_")) or key in _TRACKING_PARAMS


def canonical_url(url: str, base: str | None = None, *, keep_fragment: bool = False) -> str | None:
    """The URL one story is known by, or None when it is not an absolute http(s) URL.

    The fragment is dropped for display and links; `keep_fragment` keeps it for identity, where
    two comments on one page (`…/post#comment-1`, `…/post#comment-2`) are two items."""
    url = "".join(ch for ch in url.strip() if ch >= " " and ch != "\x7f")
    if not url:
        return None
    if base:
        url = urljoin(base, url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}" if userinfo else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    # Pairs are kept as written (not re-encoded) so that equal URLs stay byte-equal.
    pairs = [p for p in parts.query.split("&") if p]
    kept = sorted(p for p in pairs if not _is_tracking_param(unquote_plus(p.partition("=")[0])))
    fragment = parts.fragment if keep_fragment else ""
    return urlunsplit((scheme, netloc, parts.path or "/", "&".join(kept), fragment))


def absolute_url(url: str | None, base: str | None = None) -> str | None:
    """An absolute http(s) URL as written (query untouched, for images), or None."""
    if not url or not url.strip():
        return None
    joined = urljoin(base, url.strip()) if base else url.strip()
    try:
        parts = urlsplit(joined)
    except ValueError:
        return None
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.netloc:
        return None
    return joined


_BIDI_CONTROLS = dict.fromkeys([*range(0x202A, 0x202F), *range(0x2066, 0x206A)])


def _cut(text: str, max_len: int) -> str:
    if len(text) <= max_len:
        return text
    if max_len < 2:
        return text[:max_len]
    head = text[: max_len - 1]
    space = head.rfind(" ") if not text[max_len - 1].isspace() else len(head)
    # A word boundary far back would throw away most of the line; then a hard cut reads better.
    if space >= max_len // 2:
        head = head[:space]
    return head.rstrip(" ,;:-–—") + "…"


def _collapse(text: str) -> str:
    return " ".join(text.split())


def clean_line(s: str, max_len: int = 300) -> str:
    """One safe line for titles and authors: no control characters, collapsed, bounded."""
    chars = []
    for ch in s.translate(_BIDI_CONTROLS):
        chars.append(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch)
    return _cut(_collapse("".join(chars)), max_len)


def _normalize_for_fingerprint(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = [" " if unicodedata.category(ch)[0] in "PSCZ" else ch for ch in text]
    return _collapse("".join(kept))


def fingerprint(title: str, text: str) -> str:
    """Same value for one story however a feed decorates it (whitespace, punctuation, case)."""
    body = _normalize_for_fingerprint(text)[:500]
    basis = _normalize_for_fingerprint(title) + "\n" + body
    return hashlib.sha256(basis.encode("utf-8")).hexdigest()


_ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "st", "prof", "sen", "rep", "gov", "gen", "col", "lt", "sgt", "jr",
        "sr", "inc", "ltd", "co", "corp", "vs", "etc", "no", "mt", "ft",
    }
)  # fmt: skip
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*\s+(?=[\"'“‘«(\[]?[A-Z0-9À-Þ])")


def _sentences(text: str) -> Iterator[str]:
    start = 0
    for match in _SENTENCE_END.finditer(text):
        before = text[start : match.start()].rsplit(" ", 1)[-1].lower().strip("\"'“‘(")
        if before in _ABBREVIATIONS or (len(before) == 1 and before.isalpha()):
            continue
        yield text[start : match.end()].strip()
        start = match.end()
    if text[start:].strip():
        yield text[start:].strip()


def summarize(text: str, max_chars: int = 280) -> str:
    """About two sentences of plain text, cut on a word boundary when one sentence is too long."""
    text = _collapse(text)
    summary = ""
    for count, sentence in enumerate(_sentences(text)):
        candidate = f"{summary} {sentence}".strip()
        if len(candidate) > max_chars or count == 2:
            break
        summary = candidate
    return summary or _cut(text, max_chars)


_ALLOWED_TAGS = {
    "p", "a", "em", "strong", "b", "i", "ul", "ol", "li", "blockquote", "h2", "h3", "h4", "br",
    "img", "figure", "figcaption", "pre", "code",
}  # fmt: skip
_ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "width", "height"}}
# Content of these is never readable text: drop it with the tag rather than keep it as text.
_DROPPED_WITH_CONTENT = {
    "script", "style", "iframe", "noscript", "template", "object", "embed", "svg", "math",
    "select", "textarea", "button", "frameset", "noembed", "noframes", "canvas", "audio", "video",
}  # fmt: skip
_URL_SCHEMES = {"https", "http", "mailto"}


def _attribute_filter(base_url: str | None) -> Callable[[str, str, str], str | None]:
    def keep(tag: str, attr: str, value: str) -> str | None:
        if attr in ("width", "height"):
            return value if value.strip().isdigit() else None
        if attr not in ("href", "src"):
            return value
        value = value.strip()
        scheme = urlsplit(value).scheme.lower() if ":" in value else ""
        if scheme:
            return value if scheme in _URL_SCHEMES and (attr == "href" or scheme != "mailto") else None
        return absolute_url(value, base_url) if base_url else None

    return keep


def sanitize_html(html: str, base_url: str | None = None) -> str:
    """Article HTML safe to put in an email: text tags only, absolute http(s)/mailto links."""
    return nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        clean_content_tags=_DROPPED_WITH_CONTENT,
        attributes=_ALLOWED_ATTRIBUTES,
        attribute_filter=_attribute_filter(base_url),
        url_schemes=_URL_SCHEMES,
        link_rel="noopener noreferrer",
        strip_comments=True,
    ).strip()


_LXML_REFUSES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def parse_fragment(html: str) -> Any:
    """An lxml element wrapping the fragment (whole documents are reduced to their body)."""
    # lxml raises ValueError on these characters in the text before the first tag.
    html = _LXML_REFUSES.sub("", html)
    return lxml.html.fragment_fromstring(html or "<p></p>", create_parent="div")


_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "dd", "details", "div", "dl", "dt", "figcaption",
        "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main",
        "nav", "ol", "p", "pre", "section", "summary", "table", "tr", "ul",
    }
)  # fmt: skip
_SKIPPED_TAGS = frozenset(_DROPPED_WITH_CONTENT | {"head", "title"})
_PARA = "\ue000"
_LINE = "\ue001"


def _tag(el: Any) -> str:
    return el.tag.lower() if isinstance(el.tag, str) else ""


def html_to_text(html: str) -> str:
    """Readable plain text: one paragraph per block, separated by blank lines."""
    if not html.strip():
        return ""
    out: list[str] = []

    def walk(el: Any, in_pre: bool) -> None:
        tag = _tag(el)
        if tag and tag not in _SKIPPED_TAGS:
            block = tag in _BLOCK_TAGS
            in_pre = in_pre or tag == "pre"
            if block:
                out.append(_PARA)
            if tag == "br":
                out.append(_LINE)
            if el.text:
                out.append(_text(el.text, in_pre))
            for child in el:
                walk(child, in_pre)
            if block:
                out.append(_PARA)
        if el.tail:
            out.append(_text(el.tail, in_pre))

    walk(parse_fragment(html), in_pre=False)
    paragraphs = []
    for chunk in "".join(out).split(_PARA):
        lines = [_collapse(line) for line in chunk.split(_LINE)]
        paragraph = "\n".join(line for line in lines if line)
        if paragraph:
            paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)


def _text(text: str, in_pre: bool) -> str:
    text = text.replace(_PARA, " ").replace(_LINE, " ")
    return text.replace("\n", _LINE) if in_pre else text


def text_to_html(text: str) -> str:
    """Plain text (paragraphs split by blank lines) as escaped <p> elements."""
    return "\n".join(f"<p>{html_lib.escape(p)}</p>" for p in split_paragraphs(text))


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs of plain text: blank lines separate them, single line breaks are wrapping."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [_collapse(p) for p in re.split(r"\n\s*\n", text) if p.strip()]


# A paragraph that is nothing but one of these headings starts a trailing block of site furniture.
_HEADING = re.compile(
    r"""^(?:
        related(?:\s(?:articles?|stories|posts?|links|content|coverage|reading|news|topics|videos?))?
      | (?:you|we\sthink\syou)\s(?:may|might|will|could|would)\s(?:also\s)?(?:like|enjoy|be\sinterested\sin)
      | (?:also|must)\sread | read\s(?:more|next|also|this\snext) | see\salso | further\sreading
      | more\s(?:from|on|in|about|by|stories|news|articles|posts|reading|to\sread|like\sthis)\b.{0,60}
      | (?:recommended|suggested|popular|trending|latest)
        (?:\s(?:for\syou|reading|articles|stories|posts|now|news))?
      | most\s(?:read|popular|viewed|shared) | top\sstories | editor'?s?\s(?:picks|choice) | don'?t\smiss
      | about\s(?:the\s)?(?:authors?|writers?|contributors?|reporters?) | author(?:'s)?\s(?:bio|profile|info)
      | (?:share|tweet|email)(?:\s(?:this|it))?(?:\s(?:article|story|post|page))?
        (?:\s(?:on|via|with)\b.{0,40})?
      | spread\sthe\sword
      | comments?(?:\s\(\d+\))? | \d+\scomments? | leave\sa\s(?:comment|reply)
      | join\sthe\s(?:discussion|conversation)
      | (?:sponsored|promoted)(?:\s(?:content|stories|links))? | advertisement
      | (?:our\s)?newsletters? | subscribe(?:\snow|\stoday)? | sign\sup(?:\snow)?
    )[\s:.!?»›>|–—-]*$""",
    re.IGNORECASE | re.VERBOSE,
)
# Lines that label the rest of the page (tag lists, categories) whatever follows on the line.
_LABEL = re.compile(r"^(?:tags|tagged(?:\swith)?|filed\sunder|topics|categories|posted\sin)\s*:", re.I)
# Prompts that sit in a page's tail; they only start a cut when what follows is tail-like too.
_PROMPTS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\b(?:our|my)\s(?:free\s|weekly\s|daily\s|monthly\s)?(?:newsletters?|mailing\slist|e-?mail\slist|e-?mails|digest|updates|alerts)\b",
        r"\b(?:your|the)\sinbox\b|\b(?:in|to|into)\syour\se-?mail\b|\benter\syour\se-?mail",
        r"\b(?:no|not|never|don'?t|won'?t|zero)\sspam\b|\bspam\b.*\b(?:e-?mail|inbox|newsletter)|\bunsubscribe\b",
        r"^(?:subscribe|sign\sup|join|get|want|never\smiss|don'?t\smiss|stay\s(?:informed|updated|up\sto\sdate|in\sthe\sloop))\b"
        r".*\b(?:newsletter|e-?mail|inbox|updates|stories|alerts|subscribers?)\b",
        r"^(?:like|liked|enjoy|enjoyed|love|loved)\s(?:this|what\syou)\b",
        r"^(?:share|tweet|pin|forward|email)\s(?:this|it|on|via)\b|\bshare\s(?:this|it)\swith\b|\bclick\sto\sshare\b",
        r"^follow\s(?:us|me|him|her|them|the\sauthor|@)|\bfollow\sus\son\b",
        r"\bcookies?\b.*\b(?:we\suse|site\suses|website\suses|accept|consent|cookie\s(?:policy|settings))\b"
        r"|\b(?:we\suse|site\suses|website\suses)\scookies\b",
        r"^(?:read\smore|related|see\salso|also\sread|read\snext|more|recommended|watch)\s*[:»›|–—-]",
        r"^(?:©|\(c\)|copyright\b)|\ball\srights\sreserved\b",
        r"^[A-Z][\w.'’-]+(?:\s[A-Z][\w.'’-]+){0,3}\s(?:is|was|has\sbeen)\s(?:a|an|the|our)\s[^.]{0,80}?"
        r"\b(?:writer|reporter|journalist|correspondent|editor|columnist|contributor|author|freelancer|producer)\b",
        r"^[A-Z][\w.'’-]+(?:\s[A-Z][\w.'’-]+){0,3}\s(?:writes|covers|reports)\s(?:about|on|for)\b",
    )
]
_SHORT_WORDS = 30
_PROMPT_MAX_WORDS = 60


def _is_heading(paragraph: str) -> bool:
    return len(paragraph) <= 80 and bool(_HEADING.match(paragraph) or _LABEL.match(paragraph))


def _is_prompt(paragraph: str) -> bool:
    if len(paragraph.split()) > _PROMPT_MAX_WORDS:
        return False
    return _LABEL.match(paragraph) is not None or any(p.search(paragraph) for p in _PROMPTS)


def _is_tail_like(paragraph: str) -> bool:
    return _is_heading(paragraph) or _is_prompt(paragraph) or len(paragraph.split()) <= _SHORT_WORDS


def _has_words(paragraph: str) -> bool:
    return any(ch.isalnum() for ch in paragraph)


def find_boilerplate_start(paragraphs: list[str]) -> int:
    """Index where the trailing boilerplate begins (len(paragraphs) when there is none).

    A heading such as "Related" or "About the author" starts the tail outright. A prompt
    (newsletter plug, share or follow prompt, cookie notice, author bio) starts it only when
    everything after it, up to the end or the next heading, is short or boilerplate too, so a
    body sentence that mentions a newsletter is never a boundary. The first paragraph always stays.
    """
    flat = [_collapse(p) for p in paragraphs]
    for i in range(1, len(flat)):
        if _is_heading(flat[i]):
            return i
        if _is_prompt(flat[i]):
            rest = flat[i + 1 :]
            end = next((j for j, p in enumerate(rest) if _is_heading(p)), len(rest))
            if all(_is_tail_like(p) for p in rest[:end]):
                return i
    return len(flat)


_BYLINE = re.compile(r"^by\s+[A-Z][\w.'’-]+(?:,?\s(?:and\s)?[A-Z][\w.'’-]+){0,5}$", re.IGNORECASE)


def _is_byline(paragraph: str) -> bool:
    return len(paragraph) <= 80 and _BYLINE.match(_collapse(paragraph)) is not None


def trim_boilerplate(paragraphs: list[str]) -> list[str]:
    """The article without its trailing site furniture; never empty when the input was not."""
    kept = paragraphs[: find_boilerplate_start(paragraphs)]
    if len(kept) > 1 and _is_byline(kept[0]):
        kept = kept[1:]
    kept = [p for p in kept if not re.fullmatch(r"\s*advertisement\s*", p, re.IGNORECASE)]
    while len(kept) > 1 and not _has_words(kept[-1]):
        kept.pop()
    return kept or paragraphs[:1]


# Elements that are page furniture wherever they appear.
_FURNITURE_TAGS = ("nav", "aside", "footer", "form", "header", "menu", "dialog")
_FURNITURE_CLASS = re.compile(
    r"(?:^|[-_])(?:related|share|sharing|social|newsletter|subscribe|subscription|signup|comments?|"
    r"author-?bio|about-?author|byline-?bio|cookies?|consent|advert|advertisement|ads?|promo|sponsored|"
    r"sidebar|breadcrumbs?|recommended|recirc|more-stories|tags|popular|trending)(?:[-_]|$)",
    re.IGNORECASE,
)
_CONTENT_BLOCKS = frozenset(
    ["p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "blockquote", "pre", "figure", "table"]
)


def _text_len(el: Any) -> int:
    return len(_collapse(el.text_content()))


def _drop(el: Any) -> None:
    el.tail = None
    el.drop_tree()


def _content_blocks(root: Any) -> list[Any]:
    """Outermost text blocks in document order, plus divs that hold text directly."""
    blocks: list[Any] = []

    def walk(el: Any) -> None:
        for child in el:
            tag = _tag(child)
            if not tag:
                continue
            if tag in _CONTENT_BLOCKS:
                blocks.append(child)
            elif any(_tag(d) in _CONTENT_BLOCKS for d in child.iterdescendants()):
                walk(child)
            elif _collapse(child.text_content()):
                blocks.append(child)

    walk(root)
    return blocks


def trim_boilerplate_element(root: Any) -> None:
    """Trim an lxml element in place: furniture elements, then the trailing boilerplate blocks."""
    total = max(_text_len(root), 1)
    for el in list(root.iterdescendants()):
        if el.getparent() is None:
            continue
        tag = _tag(el)
        marked = tag in _FURNITURE_TAGS or any(
            _FURNITURE_CLASS.search(token) for token in f"{el.get('class', '')} {el.get('id', '')}".split()
        )
        # A stray class name on a wrapper must not take the article with it.
        if marked and _text_len(el) <= total / 2:
            el.drop_tree()
    blocks = _content_blocks(root)
    texts = [_collapse(b.text_content()) for b in blocks]
    start = find_boilerplate_start(texts)
    if start < len(blocks) and any(texts[:start]):
        for block in blocks[start:]:
            if block.getparent() is not None:
                _drop(block)
    for index, (block, text) in enumerate(zip(blocks[:start], texts[:start], strict=True)):
        if re.fullmatch(r"advertisement", text, re.IGNORECASE) or (
            index == 0 and start > 1 and _is_byline(text)
        ):
            _drop(block)


def trim_boilerplate_html(html: str) -> str:
    """HTML without nav/aside/footer/form furniture and without the trailing boilerplate blocks."""
    if not html.strip():
        return ""
    root = parse_fragment(html)
    trim_boilerplate_element(root)
    inner = "".join(lxml.html.tostring(child, encoding="unicode") for child in root)
    return str(html_lib.escape(root.text or "", quote=False)) + inner
