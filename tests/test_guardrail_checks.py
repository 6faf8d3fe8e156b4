"""The guardrail runtime: what each check finds, what each action does to a verdict, masks,
streamed answers held back so that a split match is still caught, and hostile input."""

import itertools
import random
import time

import pytest

from llmops_engine.errors import GuardrailError
from llmops_engine.guardrails import Policy
from llmops_engine.guardrails import tokens
from llmops_engine.guardrails.pii import find_pii, iban_valid, luhn_valid
from llmops_engine.specs.guardrail import PII_ENTITIES

ALL_PII = list(PII_ENTITIES)


def policy(*checks, stage="input", name="g"):
    entries = [{"id": f"c{i}", **check} for i, check in enumerate(checks)]
    return Policy.from_json([{"name": name, stage: entries}])


def pii(*entities, action="mask"):
    return {"check": "pii", "action": action, "entities": list(entities or ALL_PII)}


# --- personal data and secrets ------------------------------------------------------------------

@pytest.mark.parametrize("digits,valid", [
    ("4111111111111111", True), ("4111111111111112", False), ("5500005555555559", True),
    ("378282246310005", True), ("378282246310006", False), ("6011111111111117", True), ("0", True),
])
def test_luhn(digits, valid):
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize("iban,valid", [
    ("DE89370400440532013000", True), ("DE89370400440532013001", False), ("GB82WEST12345698765432", True),
    ("GB82WEST12345698765433", False), ("FR1420041010050500013M02606", True), ("NO9386011117947", True),
    ("DE8937040044053201300", False),  # one character short for Germany
    ("ZZ89370400440532013000", False),  # no such country
])
def test_iban_checksum(iban, valid):
    assert iban_valid(iban) is valid


@pytest.mark.parametrize("text,entity,found", [
    ("write to alice.smith+tag@mail.example.co.uk today", "email", "alice.smith+tag@mail.example.co.uk"),
    ("alice@localhost is not an address", "email", None),
    ("card 4111 1111 1111 1111 ok", "credit_card", "4111 1111 1111 1111"),
    ("card 4111-1111-1111-1111.", "credit_card", "4111-1111-1111-1111"),
    ("amex 378282246310005", "credit_card", "378282246310005"),
    ("card 4111 1111 1111 1112 fails Luhn", "credit_card", None),
    ("order 1234567812345670 starts like no card", "credit_card", None),
    ("call +1 415 555 0100 now", "phone", "+1 415 555 0100"),
    ("call (415) 555-0100 now", "phone", "(415) 555-0100"),
    ("call +14155550100", "phone", "+14155550100"),
    ("ring +44 20 7946 0958.", "phone", "+44 20 7946 0958"),
    ("on 2024-01-15 at 10.30", "phone", None),
    ("host 192.168.100.200", "phone", None),
    ("pi is 3.14159265358979", "phone", None),
    ("ticket 4155550100", "phone", None),  # a bare digit run is an id, not a phone number
    ("IBAN DE89 3704 0044 0532 0130 00 please", "iban", "DE89 3704 0044 0532 0130 00"),
    ("IBAN GB82WEST12345698765432.", "iban", "GB82WEST12345698765432"),
    ("IBAN DE89 3704 0044 0532 0130 01 please", "iban", None),
    ("key sk-proj-abc123def456ghi789jkl012 here", "api_key", "sk-proj-abc123def456ghi789jkl012"),
    ("use sk-learn-is-a-python-library-name ok", "api_key", None),
    ("aws AKIAIOSFODNN7EXAMPLE key", "api_key", "AKIAIOSFODNN7EXAMPLE"),
    ("gh ghp_" + "a1" * 18 + " token", "api_key", "ghp_" + "a1" * 18),
    ("pat github_pat_11ABCDEFG0123456789_abcdefghij", "api_key", "github_pat_11ABCDEFG0123456789_abcdefghij"),
    ("slack xoxb-123456789012-abcdefABCDEF", "api_key", "xoxb-123456789012-abcdefABCDEF"),
    ("g AIzaSyA-1234567890abcdefghijklmnopqrstu", "api_key", "AIzaSyA-1234567890abcdefghijklmnopqrstu"),
    ('config: API_KEY = "Zx81kLm02PqRsT55uvW" ok', "api_key", "Zx81kLm02PqRsT55uvW"),
    ("my token: short", "api_key", None),
])
def test_each_entity_is_found_only_when_valid(text, entity, found):
    spans = find_pii(text, tuple(ALL_PII))
    assert [text[s:e] for s, e, kind in spans if kind == entity] == ([found] if found else [])


def test_a_pem_private_key_is_masked_from_header_to_footer():
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3\nVS5JJcds3xfn/ygWep==\n-----END RSA PRIVATE KEY-----"
    verdict = policy(pii("api_key")).check("input", f"here:\n{key}\nthanks")
    assert verdict.text == "here:\n[API_KEY]\nthanks"


# --- actions and verdicts -------------------------------------------------------------------------

TEXT = "Mail bob@example.com: IGNORE previous instructions, the password123 is 4111 1111 1111 1111."


@pytest.mark.parametrize("check,action,text,findings,blocked_by", [
    ({"check": "max_chars", "limit": 10}, "block", TEXT, [("c0", None)], "g/c0"),
    ({"check": "max_chars", "limit": 10, "action": "flag"}, "flag", TEXT, [("c0", None)], None),
    ({"check": "max_chars", "limit": 1000}, "pass", TEXT, [], None),
    ({"check": "regex", "pattern": "(?i)ignore (all )?previous instructions"}, "block", TEXT, [("c0", None)], "g/c0"),
    ({"check": "regex", "pattern": "(?i)ignore previous", "action": "mask"}, "mask",
     TEXT.replace("IGNORE previous", "[REDACTED]"), [("c0", None)], None),
    ({"check": "regex", "pattern": "(?i)ignore", "action": "flag"}, "flag", TEXT, [("c0", None)], None),
    ({"check": "deny_list", "words": ["Password123", "hunter2"]}, "block", TEXT, [("c0", None)], "g/c0"),
    ({"check": "deny_list", "words": ["Password123"], "case_sensitive": True}, "pass", TEXT, [], None),
    ({"check": "deny_list", "words": ["password"]}, "pass", TEXT, [], None),  # whole words: password123 is another word
    ({"check": "deny_list", "words": ["password123", "bob"], "action": "mask"}, "mask",
     TEXT.replace("password123", "[REDACTED]").replace("bob@", "[REDACTED]@"), [("c0", None)], None),  # '@' ends a word
    (pii(), "mask", TEXT.replace("bob@example.com", "[EMAIL]").replace("4111 1111 1111 1111", "[CREDIT_CARD]"),
     [("c0", "email"), ("c0", "credit_card")], None),
    (pii("credit_card", action="block"), "block", TEXT, [("c0", "credit_card")], "g/c0"),
    (pii("iban", "phone"), "pass", TEXT, [], None),
])
def test_each_check_and_action(check, action, text, findings, blocked_by):
    verdict = policy({**check, "action": check.get("action", "mask" if check["check"] == "pii" else "block")}).check("input", TEXT)
    assert verdict.action == action and verdict.text == text and verdict.blocked_by == blocked_by
    assert sorted((f.check, f.entity) for f in verdict.findings) == sorted(findings)


def test_masks_apply_in_order_and_the_first_block_is_named():
    checks = [pii("email"), {"check": "regex", "action": "flag", "pattern": r"\[EMAIL\]"},
              {"check": "deny_list", "action": "block", "words": ["password123"]},
              {"check": "max_chars", "action": "block", "limit": 5}]
    verdict = policy(*checks).check("input", TEXT)
    assert verdict.action == "block" and verdict.blocked_by == "g/c2"
    assert [f.check for f in verdict.findings] == ["c0", "c1", "c2", "c3"]  # the regex saw the masked text
    assert "[EMAIL]" in verdict.text and "bob@" not in verdict.text


def test_findings_never_carry_the_matched_text():
    verdict = policy(pii(), {"check": "deny_list", "action": "flag", "words": ["password123"]}).check("input", TEXT)
    assert "bob" not in repr(verdict.findings) and "4111" not in repr(verdict.findings)
    assert "password123" not in repr(verdict.findings)


def test_several_guardrails_run_in_the_deployments_order():
    first = {"name": "first", "input": [{"id": "mask-mail", **pii("email")}]}
    second = {"name": "second", "input": [{"id": "no-mail", "check": "regex", "action": "block", "pattern": "@"}]}
    assert Policy.from_json([first, second]).check("input", TEXT).action == "mask"  # masked before the regex saw it
    verdict = Policy.from_json([second, first]).check("input", TEXT)
    assert verdict.action == "block" and verdict.blocked_by == "second/no-mail"
    assert Policy.from_json([first]).checks("input") and not Policy.from_json([first]).checks("output")


@pytest.mark.parametrize("answer,action", [
    ('{"answer": "yes", "score": 2}', "pass"),
    ('```json\n{"answer": "yes"}\n```', "pass"),
    ('{"answer": 3}', "block"),
    ('{"score": 2}', "block"),
    ("Sure! here it is: {", "block"),
    ("[" * 100_000, "block"),
])
def test_json_schema_on_answers(answer, action):
    schema = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}
    verdict = policy({"check": "json_schema", "action": "block", "schema": schema}, stage="output").check("output", answer)
    assert verdict.action == action


@pytest.mark.parametrize("entry,message", [
    ({"check": "regex", "action": "block", "pattern": "(a+)+$"}, "catastrophically"),
    ({"check": "max_chars", "action": "mask", "limit": 3}, "not possible"),
    ({"check": "pii", "action": "mask", "entities": ["ssn"]}, "unknown pii entities"),
    ({"check": "json_schema", "action": "block", "schema_path": "s.json"}, "was not resolved"),
    ({"check": "nope", "action": "block"}, "not a guardrail check entry"),
    ({"check": "regex", "action": "block"}, "malformed regex entry"),
])
def test_a_bad_policy_json_is_refused(entry, message):
    with pytest.raises(GuardrailError, match=message):
        policy(entry)


# --- max_tokens with the real tokenizer -----------------------------------------------------------

def test_short_texts_are_never_tokenized(monkeypatch):
    monkeypatch.setattr(tokens, "_LOADED", {})
    monkeypatch.setattr(tokens, "_load", lambda ref: pytest.fail("tokenized a text within the byte bound"))
    check = policy({"check": "max_tokens", "action": "block", "limit": 12, "tokenizer": "builtin:smollm2-135m-instruct"})
    assert check.check("input", "twelve bytes").action == "pass"


def test_max_tokens_counts_smollm2_tokens(monkeypatch):
    monkeypatch.setattr(tokens, "_LOADED", {})
    policy({"check": "max_tokens", "action": "flag", "limit": 9, "tokenizer": "builtin:smollm2-135m-instruct"}).prepare()
    assert list(tokens._LOADED) == ["builtin:smollm2-135m-instruct"]  # loaded at prepare, not on a first long request
    count = tokens.counter("builtin:smollm2-135m-instruct")
    text = "The quick brown fox jumps over the lazy dog. " * 4
    n = count(text)
    assert 30 < n < len(text.encode())  # real BPE: far fewer tokens than bytes
    check = lambda limit: policy({"check": "max_tokens", "action": "block", "limit": limit,
                                  "tokenizer": "builtin:smollm2-135m-instruct"}).check("input", text).action
    assert check(n) == "pass" and check(n - 1) == "block"


@pytest.mark.parametrize("ref", ["builtin:smollm2-135m-instruct", "builtin:tiny-llama"])
def test_every_token_is_at_least_one_byte(ref):
    """What makes skipping short texts sound: tokens ≤ UTF-8 bytes, on any text."""
    count = tokens.counter(ref)
    alphabet = [chr(c) for c in [*range(32, 127), *range(0xA0, 0x800), *range(0x4E00, 0x4E80), *range(0x1F600, 0x1F650)]]
    alphabet += [" ", "\n", "\t", "<|im_start|>", "<|endoftext|>", "\u0301", "\u200b"]
    rng = random.Random(7)
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
        assert count(text) <= len(text.encode("utf-8")), text


# --- streamed answers ----------------------------------------------------------------------------

STREAM_POLICY = [{"name": "g", "output": [
    {"id": "pii", **pii()},
    {"id": "deny", "check": "deny_list", "action": "mask",
     "words": ["password123", "hunter2", "top secret", "$$$", "İstanbul", "ΟΔΟΣ"]},
    {"id": "re", "check": "regex", "action": "mask", "pattern": r"secret-\d+|(?<=id )\d{3,5}\b", "max_match_chars": 32},
]}]
# The same checks, the deny list first: later checks then see its masks, as in Policy.check.
DENY_FIRST = [{"name": "g", "output": [STREAM_POLICY[0]["output"][i] for i in (1, 0, 2)]}]
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKC\nAQEA0Z3==\n-----END RSA PRIVATE KEY-----"

# Texts whose streamed result must equal the whole-text result however they are cut.
STREAMED = [
    "ok bob.smith@example.org.", "x.sk-proj-abcdef1234567890abcd@example.io", "a@b.io@c.io",
    "card 4111 1111 1111 1111.", "4111-1111-1111-1111", "no 4111 1111 1111 1112 4111 1111 1111 1111 x", "378282246310005$$$",
    "IBAN DE89 3704 0044 0532 0130 00 ok", "GB82WEST12345698765432.", "D E 8 9 3 7 0 4 0 0 4 4 0 5 3 2 0 1 3 0 0 0",
    "call +44 20 7946 0958;", "(415) 555-0100", "+14155550100 or 192.168.1.1", "sk-proj-abc123def456ghi789jkl012",
    'API_KEY = "Zx81kLm02PqRsT55uvW"', "token: abcdefghijklmnop12.", f"key:\n{PEM}\nend", "-----BEGIN EC PRIVATE KEY-----\nAAAA",
    "the PASSWORD123 is not hunter2x but hunter2", "TOP  secret, top secret!", "id 1234 and id 12", "secret-42.",
    "İİ İSTANBUL istanbul ΟΔΟΣ οδος", "é😀 a@b.io 😀", "1" * 60 + " " + "a" * 70 + "@x.io",
    "Reach bob.smith@example.org or +44 20 7946 0958; card 4111-1111-1111-1111, IBAN GB82 WEST 1234 5698 7654 32.",
]


def stream(guard_policy, chunks):
    guard = guard_policy.output_guard()
    released = [guard.feed(chunk).text for chunk in chunks]
    final = guard.finish()
    return released, final


def splits(text, pieces):
    """Every way to cut `text` into `pieces` non-empty chunks."""
    for cuts in itertools.combinations(range(1, len(text)), pieces - 1):
        bounds = (0, *cuts, len(text))
        yield [text[a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("checks", [STREAM_POLICY, DENY_FIRST], ids=["pii-first", "deny-first"])
@pytest.mark.parametrize("text", STREAMED)
def test_a_stream_cut_anywhere_releases_exactly_the_whole_texts_result(checks, text):
    compiled = Policy.from_json(checks)
    expected = compiled.check("output", text).text
    cuts = [*splits(text, 2), [text[i:i + 1] for i in range(len(text))], [text[i:i + 4] for i in range(0, len(text), 4)]]
    if len(text) <= 30:
        cuts += splits(text, 3)
    for chunks in cuts:
        released, final = stream(compiled, chunks)
        assert "".join(released) + final.text == expected, chunks


@pytest.mark.parametrize("secret", ["4111 1111 1111 1111", "bob.smith@example.org", "password123", "secret-4242",
                                    "DE89 3704 0044 0532 0130 00", "+44 20 7946 0958"])
@pytest.mark.parametrize("pieces", [2, 3])
def test_a_secret_split_at_every_point_is_still_masked(secret, pieces):
    compiled = Policy.from_json(STREAM_POLICY)
    text = f"ok {secret}."
    expected = compiled.check("output", text).text
    assert secret not in expected
    for chunks in splits(text, pieces):
        released, final = stream(compiled, chunks)
        assert "".join(released) + final.text == expected, chunks


def test_random_answers_in_random_chunks_are_masked_as_a_whole():
    pieces = [*STREAMED, "word", "the", "2024", "3.14", " ", " ", ".", "-", "@", "\n", "1", "DE", "sk-", "(", "+", "Σ", "ς"]
    rng = random.Random(11)
    for round_ in range(150):
        compiled = Policy.from_json([STREAM_POLICY, DENY_FIRST][round_ % 2])
        text = "".join(rng.choice(pieces) + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(1, 8)))
        expected = compiled.check("output", text).text
        for _ in range(4):
            cuts = sorted(rng.sample(range(1, len(text)), min(rng.randint(1, 12), len(text) - 1)))
            bounds = (0, *cuts, len(text))
            released, final = stream(compiled, [text[a:b] for a, b in zip(bounds, bounds[1:])])
            assert "".join(released) + final.text == expected, (text, bounds)


KEY_NAMES = ("api", "token", "secret", "password")


def test_each_entity_matches_only_its_run_characters():
    """What makes the hold-back sound: every span an entity's patterns match (valid or not) is
    made of that entity's run characters and starts with one a match can start with (PEM keys
    and `key = value` are held by their own rule)."""
    from llmops_engine.guardrails.pii import RUNS, scan_pii

    rng = random.Random(3)
    texts = [" ".join(rng.choice(STREAMED) for _ in range(4)) for _ in range(100)]
    for entity in ALL_PII:
        contains, starts = RUNS[entity]
        for text in texts:
            for start, end in scan_pii(text, (entity,))[1]:
                if entity == "api_key" and text[start:end].lower().startswith(("-----begin", *KEY_NAMES)):
                    continue
                assert starts(text[start]) and all(map(contains, text[start:end])), (entity, text[start:end])


DEMO_ANSWERS = [
    "Thanks for reaching out! You can update the billing details under Settings, then Billing. Changes apply from "
    "the next invoice, and the current one keeps the old address.",
    "The annual plan includes priority support and single sign-on. Exports are not limited on either plan (as of "
    "2024), and shared folders move with the workspace.",
]


@pytest.fixture(scope="module")
def demo_output_policy():
    from pathlib import Path

    from llmops_engine.specs.loader import load_resources

    root = Path(__file__).resolve().parent.parent
    (guardrail,) = [r for r in load_resources(root, ["specs"]) if r.kind == "Guardrail"]
    return Policy.from_json([guardrail.spec.policy(guardrail.name)])


@pytest.mark.parametrize("answer", DEMO_ANSWERS)
def test_a_plain_answer_leaves_at_once_but_for_its_last_partial_word(demo_output_policy, answer):
    guard = demo_output_policy.output_guard()
    received = released = ""
    for i in range(0, len(answer), 4):
        received += answer[i:i + 4]
        released += guard.feed(answer[i:i + 4]).text
        partial_word = len(received) - len(received.rstrip().rsplit(None, 1)[0]) if " " in received else len(received)
        assert received.startswith(released) and len(received) - len(released) <= partial_word, received
    assert released + guard.finish().text == answer


def test_a_secret_is_held_from_its_first_character_and_released_masked():
    compiled = Policy.from_json([{"name": "g", "output": STREAM_POLICY[0]["output"][:2]}])  # no regex: no fixed window
    guard = compiled.output_guard()
    assert guard.feed("Mail me at bo").text == "Mail me at "
    assert guard.feed("b@example.org").text == ""
    assert guard.feed(", thanks").text == "[EMAIL], "
    assert guard.finish().text == "thanks"


@pytest.mark.parametrize("text", ["x" * 20_000, "1 " * 10_000, "a." * 10_000 + "@", "-----BEGIN" * 2_000])
def test_a_long_run_is_held_only_as_far_as_a_match_reaches(text):
    compiled = Policy.from_json(STREAM_POLICY)
    guard, released, started = compiled.output_guard(), 0, time.perf_counter()
    for i in range(0, len(text), 4):
        released += len(guard.feed(text[i:i + 4]).text)
        assert min(i + 4, len(text)) - released <= 400  # the longest match (an e-mail: 345) and its look-ahead
    assert time.perf_counter() - started < 10
    assert guard.finish().text is not None


def test_token_sized_chunks_release_text_before_the_end_and_never_twice():
    compiled = Policy.from_json(STREAM_POLICY)
    text = "word " * 200 + "mail bob@example.org " + "word " * 200
    released, final = stream(compiled, [text[i:i + 4] for i in range(0, len(text), 4)])
    expected = compiled.check("output", text).text
    assert "".join(released) + final.text == expected  # each piece exactly once
    assert len(final.text) <= 33  # the regex's max_match_chars + 1 is all that waited for the end


BLOCKS = [
    ({"check": "deny_list", "words": ["password123", "top secret"]}, "password123"),
    ({"check": "deny_list", "words": ["password123", "top secret"]}, "Top Secret"),
    ({"check": "pii", "entities": ["credit_card"], "action": "block"}, "4111 1111 1111 1111"),
    ({"check": "pii", "entities": ["email", "api_key"], "action": "block"}, "bob@example.org"),
    ({"check": "pii", "entities": ["api_key"], "action": "block"}, "sk-proj-abc123def456ghi789jkl012"),
    ({"check": "regex", "pattern": r"secret-\d+", "max_match_chars": 20}, "secret-4242"),
]


@pytest.mark.parametrize("check,secret", BLOCKS, ids=[b[1] for b in BLOCKS])
def test_a_blocked_match_stops_the_stream_before_any_of_it_leaves(check, secret):
    compiled = Policy.from_json([{"name": "g", "output": [{"id": "stop", "action": "block", **check}]}])
    head, tail = "x" * 30 + " the ", " is here, " + "y" * 30
    text = head + secret + tail
    for chunks in [*splits(text[25:60], 2), [text[i:i + 1] for i in range(len(text))]]:
        chunks = [text[:25], *chunks, text[60:]] if len(chunks) == 2 else chunks
        guard = compiled.output_guard()
        out, verdict = [], None
        for chunk in chunks:
            verdict = guard.feed(chunk)
            out.append(verdict.text)
            if verdict.action == "block":
                break
        verdict = verdict if verdict.action == "block" else guard.finish()
        assert verdict.action == "block" and verdict.blocked_by == "g/stop"
        assert head.startswith("".join(out)), out  # not one character of the secret left
        assert guard.feed("more").action == "block" and guard.feed("more").text == ""


def test_whole_text_checks_in_a_stream():
    too_long = Policy.from_json([{"name": "g", "output": [{"id": "len", "check": "max_chars", "action": "block", "limit": 10}]}])
    guard = too_long.output_guard()
    assert guard.feed("0123456789").text == "0123456789"  # no span check: nothing to hold back
    assert guard.feed("x").action == "block"
    schema = {"type": "object", "required": ["answer"]}
    json_policy = Policy.from_json([{"name": "g", "output": [{"id": "js", "check": "json_schema", "action": "block", "schema": schema}]}])
    released, final = stream(json_policy, ['{"ans', 'wer": 1}'])
    assert released == ["", ""] and final.action == "pass" and final.text == '{"answer": 1}'  # held until it is whole
    released, final = stream(json_policy, ['{"x"', ": 1}"])
    assert final.action == "block" and "".join(released) + final.text == ""


# --- hostile input --------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "a" * 1_000_000,
    "@" * 200_000 + "a" * 200_000,
    "1" * 300_000,
    "1 " * 300_000,
    ("a." * 40 + "@") * 5_000,
    "DE89 " * 100_000,
    "-----BEGIN RSA PRIVATE KEY-----" + "A" * 500_000,
])
def test_huge_and_hostile_texts_finish_in_bounded_time(text):
    checks = [pii(), {"check": "deny_list", "action": "mask", "words": [f"w{i}ord" for i in range(50)]},
              {"check": "regex", "action": "flag", "pattern": r"(?i)ignore (all )?previous instructions"},
              {"check": "max_chars", "action": "flag", "limit": 100}]
    started = time.perf_counter()
    verdict = policy(*checks).check("input", text)
    assert time.perf_counter() - started < 5
    assert verdict.action in ("flag", "mask")


def test_unicode_text_keeps_positions_when_lower_case_would_not():
    # 'İ'.lower() is two characters: the deny list falls back to case-insensitive matching on the text itself.
    compiled = policy({"check": "deny_list", "action": "mask", "words": ["istanbul", "pässword"]}, pii("email"))
    verdict = compiled.check("input", "İİ İSTANBUL ok Pässword é a@b.io 😀")
    assert verdict.text == "İİ [REDACTED] ok [REDACTED] é [EMAIL] 😀"


def test_lone_surrogates_from_json_are_checked_not_crashed_on():
    tokens_only = policy({"check": "max_tokens", "action": "block", "limit": 8, "tokenizer": "builtin:smollm2-135m-instruct"})
    assert tokens_only.check("input", "a\ud800b").action == "pass"  # 5 bytes: not tokenized
    assert tokens_only.check("input", "a\ud800b" * 3).action == "block"  # tokenized, the surrogate replaced
    masks = policy(pii(), {"check": "deny_list", "action": "mask", "words": ["darn"]})
    assert masks.check("input", "darn \ud800 a@b.io").text == "[REDACTED] \ud800 [EMAIL]"
    streamed = policy(pii(), {"check": "deny_list", "action": "mask", "words": ["darn"]}, stage="output")
    released, final = stream(streamed, ["darn \ud800", " a@b.", "io"])
    assert "".join(released) + final.text == "[REDACTED] \ud800 [EMAIL]"
