"""Generate the demo raw data: support tickets for the fictional "Nimbus" product suite.

Deterministic (seeded, no clock, no network) and written for this project, so the data is
license-clean and any clone can regenerate byte-identical rows; `data.dvc` records their md5.

Shape, chosen so that the builtin byte-level tiny Llama can learn it in about a minute:
14 intents, each with 6 question paraphrases and one short canonical answer that fills a
slot (product or plan) from the ticket context. Every (question, context) pair is unique,
so the Dataset's `dedupe` keeps all rows, and each intent appears ~35 times, so a
hash-based eval split sees every intent.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PRODUCTS = ("Nimbus Notes", "Nimbus Drive", "Nimbus Chat")
PLANS = ("Free", "Plus", "Team")
STORAGE = {"Free": "5 GB", "Plus": "100 GB", "Team": "1 TB"}
SEATS = {"Free": "1 seat", "Plus": "3 seats", "Team": "50 seats"}

# intent -> (question paraphrases, answer template with {product} / {plan} / {storage} / {seats})
INTENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "reset_password": (
        ("How do I reset my password?", "I forgot my password.", "Can't log in, need a new password.",
         "Password reset please.", "How can I change my password?", "My password stopped working."),
        "Open {product} > Settings > Security and click Reset password.",
    ),
    "cancel_plan": (
        ("How do I cancel my subscription?", "Please cancel my plan.", "I want to stop paying.",
         "Cancel my account billing.", "How can I end my subscription?", "Stop my renewal please."),
        "Go to Billing > {plan} plan and click Cancel. It ends at period end.",
    ),
    "upgrade_plan": (
        ("How do I upgrade?", "I want a bigger plan.", "Can I move to a higher tier?",
         "How to upgrade my plan?", "I need more features.", "Upgrade me please."),
        "You are on {plan}. Open Billing > Change plan to upgrade.",
    ),
    "refund": (
        ("Can I get a refund?", "I was charged twice.", "Please refund my last payment.",
         "I want my money back.", "Refund request.", "Wrong charge on my card."),
        "Refunds within 14 days: reply with your {plan} invoice number.",
    ),
    "export_data": (
        ("How do I export my data?", "Can I download all my files?", "Export everything please.",
         "I need a backup of my data.", "How to get my data out?", "Download my account data."),
        "In {product}, open Settings > Export and choose ZIP.",
    ),
    "two_factor": (
        ("How do I turn on 2FA?", "Enable two-factor login.", "Set up two-step verification.",
         "How to add an authenticator app?", "I want 2FA on my account.", "Secure my login with a code."),
        "Open {product} > Settings > Security > Two-factor and scan the QR code.",
    ),
    "add_member": (
        ("How do I add a teammate?", "Invite a colleague.", "Add a user to my account.",
         "Can I share with my team?", "How to invite people?", "Add a new member."),
        "Your {plan} plan has {seats}. Invite from Admin > Members.",
    ),
    "storage_limit": (
        ("How much storage do I have?", "What is my storage limit?", "I'm out of space.",
         "Storage quota?", "How big can my files get in total?", "Disk space full."),
        "The {plan} plan includes {storage} of storage.",
    ),
    "sync_issue": (
        ("Sync is not working.", "My changes don't sync.", "Files are not syncing.",
         "Sync stuck.", "Devices show different data.", "Why is sync broken?"),
        "Sign out of {product}, sign in again, then check Settings > Sync.",
    ),
    "delete_account": (
        ("How do I delete my account?", "Remove my account.", "Close my account forever.",
         "Delete all my data and account.", "I want to leave the service.", "Erase my profile."),
        "Open Settings > Account > Delete. This cannot be undone.",
    ),
    "invoice": (
        ("Where is my invoice?", "I need a receipt.", "Download my bill.",
         "Send me the invoice.", "Where can I find receipts?", "Invoice for last month?"),
        "Invoices for your {plan} plan are under Billing > History.",
    ),
    "support_hours": (
        ("When is support open?", "What are your support hours?", "Can I call someone?",
         "Is support available on weekends?", "How fast do you reply?", "Talk to a human."),
        "Support for {product} is open Mon-Fri 9:00-18:00 CET.",
    ),
    "api_key": (
        ("How do I get an API key?", "Where is my API token?", "Create an API key.",
         "I need API access.", "Generate a developer token.", "How to use the API?"),
        "Create a key in {product} > Settings > Developer > API keys.",
    ),
    "change_email": (
        ("How do I change my email?", "Update my login email.", "New email address please.",
         "Change the email on my account.", "My email changed.", "Switch my account email."),
        "Open {product} > Settings > Profile > Email and confirm the link.",
    ),
}


def all_rows() -> list[dict]:
    rows = []
    for category, (questions, answer) in INTENTS.items():
        for question in questions:
            for product in PRODUCTS:
                for plan in PLANS:
                    slots = {"product": product, "plan": plan, "storage": STORAGE[plan], "seats": SEATS[plan]}
                    rows.append({
                        "question": question,
                        "context": f"Product: {product}. Plan: {plan}.",
                        "answer": answer.format(**slots),
                        "category": category,
                    })
    return rows


DEFAULT_ROWS = 500
DEFAULT_SEED = 7


def generate(rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> list[dict]:
    pool = all_rows()
    if rows > len(pool):
        raise ValueError(f"at most {len(pool)} distinct rows; asked for {rows}")
    chosen = random.Random(seed).sample(pool, rows)
    return [{"id": f"T{index:04d}", **row} for index, row in enumerate(chosen, start=1)]


def write_jsonl(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")


def write_demo(out: Path) -> None:
    write_jsonl(generate(), out)


# Builtin generators a `.dvc` file may name in `meta: {llmops_generator: <name>}`; a name,
# never a command, so a data file cannot make the engine run arbitrary code.
GENERATORS = {"support-tickets-demo": write_demo}
