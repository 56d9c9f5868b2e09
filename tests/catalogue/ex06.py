"""Exercise 6, the preference pair: mistakes students make, and correct variants."""

EXERCISE = "ex06_the_preference_pair"

DEPENDS = {
    "ex06_rule": ["ex06_rule_tests"],
    "ex06_edge": ["ex06_edge_tests"],
    "ex06_metric": ["ex06_metric_tests"],
}

_PAIR = '''
def make_pair(prompt, response_a, response_b, score_a, score_b, min_gap=0.0):
    if PROMPT_CHECK:
        raise ValueError("empty prompt")
    if SAME:
        return None
    if GAP:
        return None
    if score_a > score_b:
        return {"prompt": prompt, "chosen": response_a, "rejected": response_b}
    return {"prompt": prompt, "chosen": response_b, "rejected": response_a}
'''


def _pair(prompt_check="not prompt.strip()", same="response_a.strip() == response_b.strip()", gap="abs(score_a - score_b) <= min_gap"):
    return _PAIR.replace("PROMPT_CHECK", prompt_check).replace("SAME", same).replace("GAP", gap)


_LEAK = '''
def leaked_prompts(train_pairs, test_pairs):
    def norm(s):
        return NORM
    train = [norm(p["prompt"]) for p in train_pairs]
    return RESULT
'''


def _leak(norm='" ".join(s.lower().split())', result='sorted({norm(p["prompt"]) for p in test_pairs} & set(train))'):
    return _LEAK.replace("NORM", norm).replace("RESULT", result)


_LONG = '''
def chosen_longer_rate(pairs):
    if len(pairs) == 0:
        raise ValueError("no pairs")
    total = 0.0
    for p in pairs:
        a, b = COUNT(p["chosen"]), COUNT(p["rejected"])
        total += 1.0 if a > b else (TIE if a == b else 0.0)
    return total / len(pairs)
'''


def _long(count="len(X.split())", tie="0.5"):
    body = _LONG.replace("TIE", tie)
    return body.replace('COUNT(p["chosen"])', count.replace("X", 'p["chosen"]')).replace('COUNT(p["rejected"])', count.replace("X", 'p["rejected"]'))


ENTRIES = [
    # ------------------------------------------------------------ make_pair
    dict(cell="ex06_rule", kind="mistake", name="compares responses ignoring case", source=_pair(same="response_a.strip().lower() == response_b.strip().lower()")),
    dict(cell="ex06_rule", kind="mistake", name="strict < min_gap: a gap exactly at min_gap makes a pair", source=_pair(gap="abs(score_a - score_b) < min_gap or score_a == score_b")),
    dict(cell="ex06_rule", kind="mistake", name="no strip: a trailing space makes two different responses", source=_pair(same="response_a == response_b")),
    dict(cell="ex06_rule", kind="mistake", name="'if not prompt': a whitespace-only prompt passes", source=_pair(prompt_check="not prompt")),
    dict(cell="ex06_rule", kind="mistake", name="a tie still makes a pair (only min_gap > 0 is checked)", source=_pair(gap="min_gap > 0 and abs(score_a - score_b) <= min_gap")),
    dict(cell="ex06_rule", kind="correct", name="builds the record from a sorted list, warns about ties", tags=("stderr",), source='''
import warnings

def make_pair(prompt, response_a, response_b, score_a, score_b, min_gap=0.0):
    if not isinstance(prompt, str) or prompt.strip() == "":
        raise ValueError("the prompt is empty")
    if response_a.strip() == response_b.strip():
        return None
    if abs(score_a - score_b) <= min_gap:
        warnings.warn("make_pair: scores too close, no pair")
        return None
    (_, hi), (_, lo) = sorted([(score_a, response_a), (score_b, response_b)], key=lambda t: t[0], reverse=True)
    return dict(prompt=prompt, chosen=hi, rejected=lo)
'''),
    # ------------------------------------------------------------ leaked_prompts
    dict(cell="ex06_edge", kind="mistake", name="no lower-casing", source=_leak(norm='" ".join(s.split())')),
    dict(cell="ex06_edge", kind="mistake", name="strips the ends but does not collapse inner whitespace", source=_leak(norm="s.lower().strip()")),
    dict(cell="ex06_edge", kind="mistake", name="a repeated leak is listed every time", source=_leak(result='sorted(norm(p["prompt"]) for p in test_pairs if norm(p["prompt"]) in train)')),
    dict(cell="ex06_edge", kind="mistake", name="not sorted (the order of the test split)", source=_leak(result='list(dict.fromkeys(norm(p["prompt"]) for p in test_pairs if norm(p["prompt"]) in set(train)))')),
    dict(cell="ex06_edge", kind="mistake", name="collapses only spaces, not tabs and newlines", source=_leak(norm='" ".join(s.lower().strip().split(" ")).replace("  ", " ")')),
    dict(cell="ex06_edge", kind="correct", name="a regular expression for whitespace", tags=("vectorized",), source='''
import re

def leaked_prompts(train_pairs, test_pairs):
    norm = lambda s: re.sub(r"\\s+", " ", s).strip().lower()
    seen = set(map(norm, (p["prompt"] for p in train_pairs)))
    return sorted({norm(p["prompt"]) for p in test_pairs if norm(p["prompt"]) in seen})
'''),
    # ------------------------------------------------------------ chosen_longer_rate
    dict(cell="ex06_metric", kind="mistake", name="counts characters, not words", source=_long(count="len(X)")),
    dict(cell="ex06_metric", kind="mistake", name="split(' '): tabs, newlines and runs of spaces miscounted", source=_long(count='len(X.split(" "))')),
    dict(cell="ex06_metric", kind="mistake", name="equal lengths count as 0", source=_long(tie="0.0")),
    dict(cell="ex06_metric", kind="mistake", name="an empty response counts as one word", source=_long(count='(X.count(" ") + 1 if not X.split() else len(X.split()))')),
    dict(cell="ex06_metric", kind="mistake", name="no error for an empty list (returns 0)", source='''
def chosen_longer_rate(pairs):
    if not pairs:
        return 0.0
    s = [1.0 if len(p["chosen"].split()) > len(p["rejected"].split()) else (0.5 if len(p["chosen"].split()) == len(p["rejected"].split()) else 0.0) for p in pairs]
    return sum(s) / len(s)
'''),
    dict(cell="ex06_metric", kind="correct", name="numpy over word counts", tags=("numpy", "vectorized"), source='''
def chosen_longer_rate(pairs):
    if len(pairs) == 0:
        raise ValueError("no pairs to rate")
    c = np.array([len(p["chosen"].split()) for p in pairs])
    r = np.array([len(p["rejected"].split()) for p in pairs])
    return float(np.mean(np.sign(c - r) * 0.5 + 0.5))
'''),
]
