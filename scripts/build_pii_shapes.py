"""Builds bench/fixtures/pii_shapes.jsonl: the failing shapes of issue #15 (and variants), written by hand, filled
with Faker values under a fixed seed. The shapes are ours, not presidio-research templates.

    .venv/bin/python scripts/build_pii_shapes.py   # from the repository root
"""
import json
import random

from faker import Faker

f = Faker(["en_US"]); Faker.seed(1515); random.seed(1515)
fi = Faker("fi_FI"); hu = Faker("hu_HU"); pl = Faker("pl_PL"); fr = Faker("fr_FR"); nl = Faker("nl_NL")
def fw(s):  # fullwidth digits
    return "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in s)
def ar(s):
    return "".join(chr(0x0660 + int(c)) if c.isdigit() else c for c in s)
def card():
    return f.credit_card_number(card_type="visa16")
def grp(n): return " ".join(n[i:i+4] for i in range(0, len(n), 4))
recs = []
def add(text, *spans): recs.append({"text": text, "spans": [list(s) for s in spans]})
for loc in (fi, hu, pl):
    first, last = loc.first_name(), loc.last_name()
    pc = loc.postcode()
    add(f"{first} {last}\n{loc.street_address()}\n{loc.city()} {pc}\n044 {random.randint(100,999)} {random.randint(1000,9999)}-Office",
        ("PERSON", f"{first} {last}"))
    recs[-1]["spans"].append(["PHONE_NUMBER", recs[-1]["text"].split("\n")[-1].split("-Office")[0]])
for a, b in ((fr.first_name(), nl.first_name()), (hu.first_name(), fi.first_name())):
    add(f'{a}: "Are you coming tonight?"\n{b}:"No, I have to work."\n{a}:"Again?"', ("PERSON", a), ("PERSON", b))
n = fi.first_name(); add(f'{n}: "I left the keys under the mat."', ("PERSON", n))
for _ in range(4):
    first, last = f.first_name().lower(), f.last_name().lower()
    st = f"{random.randint(1,999)} {f.street_name().split()[0].lower()} st"
    dob = f.date_of_birth(minimum_age=20, maximum_age=80).isoformat()
    add(f"{first} {last}, {st}, {dob}", ("PERSON", f"{first} {last}"), ("STREET_ADDRESS", st), ("DATE_OF_BIRTH", dob))
rows = []
spans = []
for _ in range(3):
    first, last = f.first_name(), f.last_name()
    dob = f.date_of_birth(minimum_age=20, maximum_age=80).strftime("%m/%d/%Y")
    rows.append(f"{first} {last}\t{dob}\t{f.city()}")
    spans += [("PERSON", f"{first} {last}"), ("DATE_OF_BIRTH", dob)]
add("full_name\tdob\tcity\n" + "\n".join(rows), *spans)
first, last = f.first_name().upper(), f.last_name().upper()
add(f"PATIENT: {first} {last}\nDOB: 1961-04-17\nWARD 4", ("PERSON", f"{first} {last}"), ("DATE_OF_BIRTH", "1961-04-17"))
for word in ("order", "invoice", "ticket #", "customer ID:"):
    add(f"Your {word} {random.randint(1000000, 9999999)} was updated, call us at +44 20 7946 {random.randint(1000,9999)} with questions")
    recs[-1]["spans"].append(["PHONE_NUMBER", recs[-1]["text"].split("call us at ")[1].split(" with")[0]])
c = card(); add(f"my card number is {fw(grp(c))}, expiry next year", ("CREDIT_CARD", fw(grp(c))))
c = card(); add(f"Card: {grp(c)}\r\nName: {f.name()}\r\n", ("CREDIT_CARD", grp(c)))
ph = f"0{random.randint(400,499)} {random.randint(10,99)} {random.randint(10,99)} {random.randint(10,99)}"
add(f"text me on {fw(ph)} after six", ("PHONE_NUMBER", fw(ph)))
ph = f"0{random.randint(400,499)} {random.randint(100,999)} {random.randint(1000,9999)}"
add(f"whatsapp: {ar(ph)}", ("PHONE_NUMBER", ar(ph)))
for _ in range(3):
    u = f.user_name(); d = f.free_email_domain()
    e = u[:3] + "\u200b" + u[3:] + "@" + d
    add(f"Please write to {e} about the refund", ("EMAIL_ADDRESS", e))
e = f.email(); add(f"CONTACT {e.upper()} FOR DETAILS", ("EMAIL_ADDRESS", e.upper()))
for _ in range(2):
    ssn = f.ssn(); add(f"SSN on file: {ssn}\r\nPlease verify.", ("US_SSN", ssn))
for _ in range(2):
    ib = Faker("de_DE").iban(); add(f"wire it to {ib.lower()} by friday", ("IBAN_CODE", ib.lower()))
ip = f.ipv4_public(); add(f"login from {ip}\r\nblocked", ("IP_ADDRESS", ip))
n1, n2, n3 = hu.last_name(), fi.last_name(), pl.last_name()
add(f"The firm was started by its founders: {n1}, {n2} and {n3}.", ("PERSON", n1), ("PERSON", n2), ("PERSON", n3))
n = fi.last_name(); add(f"{n} lives in a small flat near the station.", ("PERSON", n))
n = hu.first_name().lower(); add(f"hello, my name is {n} and i lost my badge", ("PERSON", n))
n = pl.first_name(); add(f"{n}, could you send me the report?", ("PERSON", n))
long = ("lorem ipsum " * 1800) + f"call me at 0{random.randint(400,499)} 92 82 32 " + ("dolor sit " * 500)
add(long, ("PHONE_NUMBER", long.split("call me at ")[1][:13]))
with open("bench/fixtures/pii_shapes.jsonl", "w", encoding="utf-8") as out:
    out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
print(len(recs))
