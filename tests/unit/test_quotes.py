"""Unit tests for gateway.quotes on small inline examples."""

from __future__ import annotations

import time

import pytest

from gateway.quotes import html_to_text, sanitize_html, strip_html_reply, strip_reply

# --------------------------------------------------------------------------------------------
# strip_reply: quote headers per language and client
# --------------------------------------------------------------------------------------------

HEADER_CASES = {
    "english_gmail": "On Mon, Mar 4, 2024 at 10:12 AM Jane Roe <jane@example.com> wrote:\n\n> old text\n",
    "english_no_quote_prefix": "On Mon, Mar 4, 2024 at 10:12 AM Jane Roe <jane@example.com> wrote:\n\nold text\n",
    "apple_mail": "On 4 Mar 2024, at 10:12, Jane Roe <jane@example.com> wrote:\n\n> old text\n",
    "gmail_wrapped_2_lines": "On Mon, Mar 4, 2024 at 10:12 AM Jane Roe <\njane@example.com> wrote:\n\n> old text\n",
    "wrapped_3_lines": "On Mar 4, 2024, at 10:12 AM, Jane Roe\n<jane@example.com>\nwrote:\n\n> old text\n",
    "german": "Am 04.03.2024 um 10:12 schrieb Jana Muster <jana@example.de>:\n\n> alter Text\n",
    "german_unquoted": "Am Mo., 4. März 2024 um 10:12 Uhr schrieb Jana Muster <jana@example.de>:\n\nalter Text\n",
    "french": "Le lun. 4 mars 2024 à 10:12, Jeanne Roux <jeanne@example.fr> a écrit :\n\n> ancien texte\n",
    "french_wrapped": "Le lun. 4 mars 2024 à 10:12, Jeanne Roux <jeanne@example.fr>\na écrit :\n\nancien texte\n",
    "spanish": "El lun, 4 mar 2024 a las 10:12, Juana Ruiz (<juana@example.es>) escribió:\n\n> texto viejo\n",
    "date_and_address_only": "2024-03-04 10:12 GMT+01:00 Jane Roe <jane@example.com>:\n\nold text\n",
    "outlook_original_message": (
        "-----Original Message-----\nFrom: Jane Roe [mailto:jane@example.com]\nSent: Monday, March 4, 2024 10:12 AM\n"
        "To: Support\nSubject: Printer\n\nold text\n"
    ),
    "outlook_block_en": (
        "________________________________\nFrom: Jane Roe <jane@example.com>\nSent: Monday, March 4, 2024 10:12\n"
        "To: Support <support@example.com>\nSubject: Printer\n\nold text\n"
    ),
    "outlook_block_bold": (
        "*From:* Jane Roe [mailto:jane@example.com]\n*Sent:* Monday, March 4, 2024 10:12 AM\n*To:* Support\n"
        "*Subject:* Printer\n\nold text\n"
    ),
    "outlook_block_de": (
        "Von: Jana Muster <jana@example.de>\nGesendet: Montag, 4. März 2024 10:12\nAn: Support <support@example.com>\n"
        "Betreff: Drucker\n\nalter Text\n"
    ),
    "outlook_block_de_original": (
        "-----Ursprüngliche Nachricht-----\nVon: Jana Muster <jana@example.de>\nGesendet: Montag, 4. März 2024\n"
        "An: Support\nBetreff: Drucker\n\nalter Text\n"
    ),
    "outlook_block_fr": (
        "De : Jeanne Roux <jeanne@example.fr>\nEnvoyé : lundi 4 mars 2024 10:12\nÀ : Support <support@example.com>\n"
        "Objet : Imprimante\n\nancien texte\n"
    ),
    "outlook_block_es": (
        "De: Juana Ruiz <juana@example.es>\nEnviado: lunes, 4 de marzo de 2024 10:12\n"
        "Para: Soporte <support@example.com>\n"
        "Asunto: Impresora\n\ntexto viejo\n"
    ),
    "outlook_block_wrapped_from": (
        "From: Human Resources\n<a-very-long-address@example.com>\nSent: Monday, March 4, 2024 10:12 AM\n"
        "To: Support\nSubject: Printer\n\nold text\n"
    ),
}


@pytest.mark.parametrize("history", list(HEADER_CASES.values()), ids=list(HEADER_CASES))
def test_strip_reply_drops_history_after_header(history: str) -> None:
    body = "Thanks, that fixed it.\n\nBest,\nAnna\n\n" + history
    assert strip_reply(body) == "Thanks, that fixed it.\n\nBest,\nAnna"


def test_quote_lines_dropped_and_inline_answers_kept() -> None:
    body = (
        "On Tue, Apr 2, 2024 at 9:00 AM Bob <bob@example.com> wrote:\n"
        "> Does it print?\n"
        "\n"
        "Yes, it prints.\n"
        "\n"
        "> And the scanner?\n"
        "\n"
        "The scanner is broken.\n"
    )
    assert strip_reply(body) == "Yes, it prints.\n\nThe scanner is broken."


def test_header_directly_under_text_keeps_the_text() -> None:
    body = "Hi,\nOn Tue, 2011-03-01 at 18:02 +0530, Abhishek Kona wrote:\n> question\n\nanswer\n"
    assert strip_reply(body) == "Hi,\n\nanswer"


def test_words_like_on_are_not_headers() -> None:
    body = "One more thing:\n\nOn the other hand, it works.\nOn average it takes 2 minutes.\n"
    assert strip_reply(body) == body.strip()


def test_wrote_in_prose_is_not_a_header() -> None:
    body = "In 2019 I wrote:\n\nthe first draft of the manual.\n"
    assert strip_reply(body) == body.strip()


def test_signature_delimiter() -> None:
    assert strip_reply("Please reset my password.\n\n-- \nAnna Smith\nACME Ltd\n") == "Please reset my password."
    assert strip_reply("Please reset it.\n--\nAnna\n") == "Please reset it."


def test_dashes_inside_a_line_are_not_a_signature() -> None:
    body = "Fixed it -- thanks.\n\n-- first point\n-- second point\n"
    assert strip_reply(body) == body.strip()


@pytest.mark.parametrize(
    "signature",
    [
        "Sent from my iPhone",
        "Sent from my Verizon Wireless BlackBerry",
        "Get Outlook for iOS<https://aka.ms/o0ukef>",
        "Gesendet von meinem iPhone",
        "Von meinem iPhone gesendet",
        "Envoyé de mon iPhone",
        "Enviado desde mi iPhone",
    ],
)
def test_mobile_signatures(signature: str) -> None:
    body = f"Please call me back.\n\n{signature}\n\nOn Apr 3, 2012, at 4:19 PM, bob <bob@example.com> wrote:\n\n> Hi\n"
    assert strip_reply(body) == "Please call me back."


def test_sent_from_in_a_sentence_is_kept() -> None:
    body = "Here it is.\n\nSent from my desk, is much easier than my phone.\n"
    assert strip_reply(body) == body.strip()


def test_mailing_list_footer_dropped() -> None:
    body = (
        "Same issue here.\n\n_______________________________________________\nusers mailing list\n"
        "users@lists.example.org\nhttp://lists.example.org/mailman/listinfo/users\n"
    )
    assert strip_reply(body) == "Same issue here."


def test_forwarded_message_is_kept() -> None:
    body = (
        "Customer complaint below.\n\n---------- Forwarded message ---------\nFrom: Carl <carl@example.com>\n"
        "Date: Mon, Mar 4, 2024 at 10:12 AM\nSubject: Broken\nTo: Anna <anna@example.com>\n\nIt is broken.\n"
    )
    assert strip_reply(body) == body.strip()


def test_all_quoted_body_returns_input() -> None:
    body = "\n> quoted only\n> more\n\n"
    assert strip_reply(body) == body.rstrip()
    fwd = "-----Original Message-----\nFrom: a@example.com\nSent: today 1\nTo: b@example.com\n\nbody\n"
    assert strip_reply(fwd) == fwd.rstrip()


def test_empty_and_blank() -> None:
    assert strip_reply("") == ""
    assert strip_reply("  \n\n") == ""


def test_surrounding_blank_lines_and_crlf() -> None:
    body = "\r\n\r\nHello\r\n\r\nOn Mon, Mar 4, 2024 at 10:12 AM X <x@example.com> wrote:\r\n> old\r\n\r\n"
    assert strip_reply(body) == "Hello"


def test_rewrapped_quote_lines_count_as_quote() -> None:
    body = ("Answer.\n\nOn 4 Mar 2024, X <x@example.com> wrote:\n"
            "> a long quoted line that the client\nwrapped badly\n> end\n")
    assert strip_reply(body) == "Answer."


# --------------------------------------------------------------------------------------------
# performance
# --------------------------------------------------------------------------------------------

PATHOLOGICAL = {
    "one_long_line": "On " * 350_000,
    "many_short_lines": "a\n" * 500_000,
    "header_like_lines": "x@y 1:\n" * 150_000,
    "wrote_lines": "1 wrote:\n" * 120_000,
    "quote_markers": ">" * 1_000_000,
    "dashes": "-" * 1_000_000 + "x",
    "key_lines": "To: a 1\n" * 130_000,
}


@pytest.mark.parametrize("body", list(PATHOLOGICAL.values()), ids=list(PATHOLOGICAL))
def test_strip_reply_is_fast_on_1mb(body: str) -> None:
    assert len(body) >= 900_000
    start = time.process_time()
    strip_reply(body)
    assert time.process_time() - start < 2.0


def test_html_is_fast_on_1mb() -> None:
    html = "<div>" * 20_000 + "word " * 100_000 + "<blockquote>" * 20_000 + "<p>a</p>" * 50_000
    start = time.process_time()
    html_to_text(html)
    strip_html_reply(html)
    assert time.process_time() - start < 4.0


# --------------------------------------------------------------------------------------------
# html_to_text
# --------------------------------------------------------------------------------------------


def test_html_to_text_structure() -> None:
    html = (
        "<html><head><title>T</title><style>p{color:red}</style></head><body>"
        "<script>alert(1)</script><p>Para one<br>line two</p><p>Para&nbsp;two &amp; more</p>"
        "<ul><li>apple</li><li>pear</li></ul>"
        "<table><tr><th>Name</th><th>Qty</th></tr><tr><td>Bolt</td><td>4</td></tr></table>"
        "<div>div   one</div><div>div two</div></body></html>"
    )
    assert html_to_text(html) == (
        "Para one\nline two\n\nPara two & more\n\n- apple\n- pear\nName | Qty\nBolt | 4\ndiv one\ndiv two"
    )


def test_html_to_text_links_and_pre() -> None:
    html = '<p>See <a href="https://example.com/kb/1">the article</a>.</p><pre>  a\n    b</pre>'
    assert html_to_text(html) == "See the article <https://example.com/kb/1>.\n\n  a\n    b"


def test_html_to_text_empty_divs_and_br() -> None:
    assert html_to_text("<div>Hi</div><div><br></div><div>Bye</div>") == "Hi\n\nBye"
    assert html_to_text("") == ""


# --------------------------------------------------------------------------------------------
# strip_html_reply
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "quote",
    [
        '<blockquote type="cite"><div>old</div></blockquote>',
        '<div class="gmail_quote">On Mon, X wrote:<blockquote class="gmail_quote">old</blockquote></div>',
        '<div class="moz-cite-prefix">On 01.02.2024 10:00, X wrote:<br></div><blockquote type="cite">old</blockquote>',
        '<div id="divRplyFwdMsg"><b>From:</b> X<br><b>Sent:</b> today</div><div>old</div>',
        "<div style=\"border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm\">"
        "<p><b>From:</b> X<br><b>Sent:</b> Monday<br><b>To:</b> Y<br><b>Subject:</b> Z</p></div><p>old</p>",
        '<span id="OLK_SRC_BODY_SECTION"><div>From: X</div><div>old</div></span>',
    ],
)
def test_strip_html_reply(quote: str) -> None:
    html = f"<html><body><div>New answer.</div><div>Anna</div>{quote}</body></html>"
    assert strip_html_reply(html) == "New answer.\nAnna"


def test_strip_html_reply_all_quoted_keeps_content() -> None:
    assert strip_html_reply("<blockquote>forwarded text</blockquote>") == "forwarded text"


def test_border_top_without_header_is_not_cut() -> None:
    html = '<div>Answer</div><div style="border-top: 1px solid #ccc">Footer note</div>'
    assert strip_html_reply(html) == "Answer\nFooter note"


# --------------------------------------------------------------------------------------------
# sanitize_html
# --------------------------------------------------------------------------------------------


def test_sanitize_removes_scripts_and_handlers() -> None:
    html = '<p onclick="x()">Hi<script>alert(1)</script><img src="https://x/a.png" onerror="alert(2)"></p>'
    out = sanitize_html(html)
    assert "script" not in out and "alert" not in out and "onerror" not in out and "onclick" not in out
    assert "<p>Hi" in out and 'src="https://x/a.png"' in out


def test_sanitize_javascript_links_and_rel() -> None:
    out = sanitize_html('<a href="javascript:alert(1)">x</a><a href="https://example.com">y</a>')
    assert "javascript" not in out
    assert '<a href="https://example.com" rel="noopener noreferrer">y</a>' in out


def test_sanitize_drops_forms_iframes_styles() -> None:
    out = sanitize_html(
        '<style>body{}</style><form action="https://evil"><input name="p"><button>Go</button></form>'
        '<iframe src="https://evil"></iframe><p style="position:fixed">text</p>'
    )
    for bad in ("<style", "<form", "<input", "<iframe", "position", "body{}", "evil"):
        assert bad not in out
    assert "text" in out


def test_sanitize_images_cid_https_only() -> None:
    out = sanitize_html('<img src="cid:part1"><img src="http://track/x.gif"><img src="data:image/png;base64,AA">')
    assert 'src="cid:part1"' in out
    assert "http://track" not in out and "data:" not in out


def test_sanitize_keeps_formatting_and_tables() -> None:
    html = "<p><b>bold</b> <i>it</i></p><table><tr><td colspan=\"2\">c</td></tr></table><ul><li>x</li></ul>"
    out = sanitize_html(html)
    for tag in ("<b>", "<i>", "<table>", "<td colspan=\"2\">", "<li>"):
        assert tag in out


def test_sanitize_empty() -> None:
    assert sanitize_html("") == ""
    assert sanitize_html("   ") == ""
