"""Issue 16, class 3: undeclared 8-bit charsets in headers and bodies (mails made here)."""

from __future__ import annotations

import pytest

from gateway import charsets
from gateway.mime import parse_mail

# (codec the sender's program wrote, display name, subject, body)
TEXTS = [
    ("gb2312", "张伟", "关于服务器故障的问题", "服务器昨天晚上停止工作了，请尽快处理。"),
    ("gbk", "欧阳娜娜", "打印机无法连接网络", "办公室的打印机从周一开始无法连接网络。"),
    ("big5", "陳大文", "關於伺服器故障的問題", "伺服器昨天晚上停止工作了，請盡快處理。"),
    ("shift_jis", "田中太郎", "サーバー障害について", "昨日の夜からサーバーが動きません。至急対応をお願いします。"),
    ("euc_kr", "김철수", "서버 장애에 관한 문의", "어제 밤부터 서버가 작동하지 않습니다. 빨리 처리해 주세요."),
    ("koi8_r", "Иван Петров", "Проблема с сервером", "Сервер не работает со вчерашнего вечера, помогите срочно."),
    ("cp1251", "Иван Петров", "Проблема с сервером", "Сервер не работает со вчерашнего вечера, помогите срочно."),
    ("cp1252", "José Müller", "Problème avec le serveur", "Le serveur ne répond plus depuis hier soir, très urgent."),
]
IDS = [t[0] for t in TEXTS]


def _mail(cs: str, name: str, subject: str, body: str, ctype: str = "text/plain", domain: str = "example.com") -> bytes:
    return (b"From: " + name.encode(cs) + b" <sender@" + domain.encode() + b">\nTo: support@example.com\n"
            b"Subject: " + subject.encode(cs) + b"\nMIME-Version: 1.0\nContent-Type: " + ctype.encode()
            + b"\nContent-Transfer-Encoding: 8bit\n\n" + body.encode(cs) + b"\n")


@pytest.mark.parametrize("cs, name, subject, body", TEXTS, ids=IDS)
def test_undeclared_headers_and_body(cs: str, name: str, subject: str, body: str) -> None:
    p = parse_mail(_mail(cs, name, subject, body))
    assert (p.from_name, p.subject, p.text.strip()) == (name, subject, body)
    assert any("undeclared 8-bit bytes" in d and "(detected)" in d for d in p.defects), p.defects


@pytest.mark.parametrize("cs, name, subject, body", TEXTS, ids=IDS)
def test_the_declared_body_charset_decodes_the_undeclared_headers(cs: str, name: str, subject: str, body: str) -> None:
    p = parse_mail(_mail(cs, name, subject, body, ctype=f"text/plain; charset={cs}"))
    assert (p.from_name, p.subject, p.text.strip()) == (name, subject, body)


@pytest.mark.parametrize("cs, name, subject, body", TEXTS, ids=IDS)
def test_headers_alone(cs: str, name: str, subject: str, body: str) -> None:
    raw = b"From: " + name.encode(cs) + b" <s@example.com>\nSubject: " + subject.encode(cs) + b"\n\nHello\n"
    p = parse_mail(raw)
    assert (p.from_name, p.subject) == (name, subject)


@pytest.mark.parametrize("cs, text", [("koi8_r", "Привет"), ("cp1251", "Привет"), ("gb18030", "服务器故障"),
                                      ("big5", "您好嗎"), ("cp932", "こんにちは"), ("cp949", "안녕하세요"),
                                      ("cp1252", "Café crème"), ("cp1251", "Счёт-фактура")])
def test_a_short_subject_alone(cs: str, text: str) -> None:
    p = parse_mail(b"From: s@example.com\nSubject: " + text.encode(cs) + b"\n\nHello\n")
    assert p.subject == text


@pytest.mark.parametrize("cs, text, domain", [("cp949", "김철수", "example.kr"), ("cp1250", "Dvořák", "firma.cz")])
def test_the_senders_country_decides_between_equally_good_readings(cs: str, text: str, domain: str) -> None:
    p = parse_mail(b"From: " + text.encode(cs) + b" <s@" + domain.encode() + b">\nSubject: x\n\nHello\n")
    assert p.from_name == text


def test_an_encoded_word_elsewhere_names_the_charset_of_raw_bytes() -> None:
    raw = (b"From: " + "김철수".encode("euc_kr") + b" <s@example.com>\n"
           b"Subject: =?euc-kr?B?vK359A==?=\n\nHello\n")
    assert parse_mail(raw).from_name == "김철수"


def test_no_byte_is_lost() -> None:
    # bytes no candidate reads as text: every byte stays, as the latin-1 character of the same number
    p = parse_mail(b"From: s@example.com\nSubject: s\nContent-Type: text/plain\n\na\x81b\x8dc\xff\n")
    assert p.text == "a\x81b\x8dc\xff\n"
    # a detected charset keeps every byte too: the text encodes back to exactly the bytes sent
    body = "Сервер не работает со вчерашнего вечера. " * 50
    p = parse_mail(b"From: s@example.com\nSubject: s\n\n" + body.encode("koi8_r"))
    assert p.text.encode("koi8_r") == body.encode("koi8_r")


def test_utf8_with_a_stray_byte_is_not_guessed() -> None:
    assert charsets.guess("Grüße und café".encode() + b" caf\xe9") is None


def test_the_detector_sees_a_bounded_sample() -> None:
    big = ("Проблема с сервером. " * 10_000).encode("cp1251")
    sample = charsets._sample(big)
    assert len(sample) <= charsets._MAX_SAMPLE < len(big)
    assert sample.endswith(b" ") and big.startswith(sample)  # cut on a character boundary
    assert charsets.guess(big) == "cp1251"
