"""Exercise 3, policy shift under a KL budget: mistakes students make, and correct variants."""

EXERCISE = "ex03_policy_shift_under_kl_budget"

DEPENDS = {
    "ex03_rule": ["ex03_rule_tests"],
    "ex03_edge": ["ex03_edge_tests"],     # the solution computes the KL itself
    "ex03_metric": ["ex03_metric_tests"],
    "ex03_model": ["ex03_model_tests"],
}

_KL = '''
def kl_divergence(p, q):
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p.shape != q.shape:
        raise ValueError("lengths differ")
    if (p < 0).any() or (q < 0).any() or abs(p.sum() - 1) > 1e-6 or abs(q.sum() - 1) > 1e-6:
        raise ValueError("not distributions")
    BODY
'''

_TK = '''
def token_kl(policy, reference, input_ids, attention_mask, response_mask):
    m = MASK
    if bool((response_mask[:, 1:].sum(-1) == 0).any()):
        raise ValueError("empty response")
    pos = POS
    with torch.no_grad():
        a = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits[:, :-1].float()
        b = reference(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits[:, :-1].float()
    LOGS
    kl = KL
    return REDUCE
'''


def _tk(mask="response_mask[:, 1:].float()", pos="(attention_mask.cumsum(-1) - 1).clamp(min=0)",
        logs="lp, lq = torch.log_softmax(a, -1), torch.log_softmax(b, -1)", kl="(lp.exp() * (lp - lq)).sum(-1)",
        reduce="(kl * m).sum(-1) / m.sum(-1)"):
    return _TK.replace("MASK", mask).replace("POS", pos).replace("LOGS", logs).replace("KL", kl).replace("REDUCE", reduce)


ENTRIES = [
    # ------------------------------------------------------------ kl_divergence
    dict(cell="ex03_rule", kind="mistake", name="KL(q || p): the reverse direction", source=_KL.replace("BODY", '''m = q > 0
    if (p[m] == 0).any():
        return math.inf
    return float(np.sum(q[m] * np.log(q[m] / p[m])))''')),
    dict(cell="ex03_rule", kind="mistake", name="clips q at 1e-12: a tiny probability becomes a smoothed one", source=_KL.replace("BODY", '''m = p > 0
    if (q[m] == 0).any():
        return math.inf
    return float(np.sum(p[m] * np.log(p[m] / np.clip(q[m], 1e-12, None))))''')),
    dict(cell="ex03_rule", kind="mistake", name="0 log 0 gives nan", source=_KL.replace("BODY", '''with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(p * np.log(p / q)))''')),
    dict(cell="ex03_rule", kind="mistake", name="skips responses the reference rules out (returns a finite KL)", source=_KL.replace("BODY", '''m = (p > 0) & (q > 0)
    return float(np.sum(p[m] * np.log(p[m] / q[m])))''')),
    dict(cell="ex03_rule", kind="correct", name="np.where over every entry (warns on stderr about log(0))", tags=("stderr", "vectorized"), source=_KL.replace("BODY", '''if ((p > 0) & (q == 0)).any():
        return math.inf
    terms = np.where(p > 0, p * np.log(p / q), 0.0)   # numpy warns about log(0); the value is right
    return float(terms.sum())''')),
    dict(cell="ex03_rule", kind="correct", name="a loop with math.log", tags=("loops",), source='''
def kl_divergence(p, q):
    p, q = [float(x) for x in np.ravel(p)], [float(x) for x in np.ravel(q)]
    if len(p) != len(q) or not p:
        raise ValueError("p and q must have one non-zero length")
    if min(p) < 0 or min(q) < 0 or abs(sum(p) - 1) > 1e-6 or abs(sum(q) - 1) > 1e-6:
        raise ValueError("p and q must be probability vectors")
    total = 0.0
    for a, b in zip(p, q):
        if a > 0:
            if b == 0:
                return math.inf
            total += a * (math.log(a) - math.log(b))
    return total
'''),
    # ------------------------------------------------------------ within_budget
    dict(cell="ex03_edge", kind="mistake", name="strict < : a shift exactly at the budget fails", source='''
def within_budget(p, ref, budget):
    if budget < 0:
        raise ValueError("negative budget")
    return kl_divergence(p, ref) < budget
'''),
    dict(cell="ex03_edge", kind="mistake", name="ignores responses the reference rules out", source='''
def within_budget(p, ref, budget):
    if budget < 0:
        raise ValueError("negative budget")
    p, q = np.asarray(p, dtype=float), np.asarray(ref, dtype=float)
    m = (p > 0) & (q > 0)
    return bool(np.sum(p[m] * np.log(p[m] / q[m])) <= budget)
'''),
    dict(cell="ex03_edge", kind="mistake", name="KL(ref || p): the reverse direction", source='''
def within_budget(p, ref, budget):
    if budget < 0:
        raise ValueError("negative budget")
    return kl_divergence(ref, p) <= budget
'''),
    dict(cell="ex03_edge", kind="mistake", name="no check on a negative budget", source='''
def within_budget(p, ref, budget):
    return kl_divergence(p, ref) <= budget
'''),
    dict(cell="ex03_edge", kind="correct", name="calls kl_divergence from part 2", tags=("numpy",), source='''
def within_budget(p, ref, budget):
    if budget < 0:
        raise ValueError("the budget must be >= 0")
    return bool(kl_divergence(p, ref) <= budget)
'''),
    # ------------------------------------------------------------ kl_k3
    dict(cell="ex03_metric", kind="mistake", name="log r = policy minus reference (the wrong way round)", source='''
def kl_k3(logp, logp_ref):
    a, b = np.asarray(logp, dtype=float), np.asarray(logp_ref, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("bad input")
    lr = a - b
    return float(np.mean(np.expm1(lr) - lr))
'''),
    dict(cell="ex03_metric", kind="mistake", name="exp(log r) - 1: loses precision for tiny log r", source='''
def kl_k3(logp, logp_ref):
    a, b = np.asarray(logp, dtype=float), np.asarray(logp_ref, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("bad input")
    lr = b - a
    return float(np.mean(np.exp(lr) - 1 - lr))
'''),
    dict(cell="ex03_metric", kind="mistake", name="k1 (the mean log-ratio) instead of k3", source='''
def kl_k3(logp, logp_ref):
    a, b = np.asarray(logp, dtype=float), np.asarray(logp_ref, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("bad input")
    return float(np.mean(a - b))
'''),
    dict(cell="ex03_metric", kind="mistake", name="no length check (one reference value broadcasts)", source='''
def kl_k3(logp, logp_ref):
    a, b = np.asarray(logp, dtype=float), np.asarray(logp_ref, dtype=float)
    if a.size == 0:
        raise ValueError("no samples")
    lr = b - a
    return float(np.mean(np.expm1(lr) - lr))
'''),
    dict(cell="ex03_metric", kind="mistake", name="returns the per-sample estimates", source='''
def kl_k3(logp, logp_ref):
    a, b = np.asarray(logp, dtype=float), np.asarray(logp_ref, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("bad input")
    lr = b - a
    return np.expm1(lr) - lr
'''),
    dict(cell="ex03_metric", kind="correct", name="torch.expm1 in float64", tags=("torch",), source='''
def kl_k3(logp, logp_ref):
    a = torch.as_tensor(np.asarray(logp, dtype=np.float64)).reshape(-1)
    b = torch.as_tensor(np.asarray(logp_ref, dtype=np.float64)).reshape(-1)
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError("need two non-empty inputs of one length")
    lr = b - a
    return (torch.expm1(lr) - lr).mean().item()
'''),
    # ------------------------------------------------------------ token_kl (the model)
    dict(cell="ex03_model", kind="mistake", name="log(softmax(.)): nan where probabilities underflow",
         source=_tk(logs="lp, lq = torch.log(torch.softmax(a, -1)), torch.log(torch.softmax(b, -1))")),
    dict(cell="ex03_model", kind="mistake", name="KL(reference || policy): the reverse direction", source=_tk(kl="(lq.exp() * (lq - lp)).sum(-1)")),
    dict(cell="ex03_model", kind="mistake", name="mask not shifted: off by one position",
         source=_tk(mask="response_mask[:, :-1].float()")),
    dict(cell="ex03_model", kind="mistake", name="no position ids: left padding changes the KL", source=_tk(pos="None")),
    dict(cell="ex03_model", kind="mistake", name="summed over the response instead of averaged", source=_tk(reduce="(kl * m).sum(-1)")),
    dict(cell="ex03_model", kind="correct", name="float64 log-softmax, per-row loop for the mean", tags=("loops", "torch"), source='''
def token_kl(policy, reference, input_ids, attention_mask, response_mask):
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        lp = torch.log_softmax(policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits[:, :-1].double(), -1)
        lq = torch.log_softmax(reference(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits[:, :-1].double(), -1)
    out = []
    for b in range(input_ids.shape[0]):
        keep = response_mask[b, 1:].bool()
        if not bool(keep.any()):
            raise ValueError(f"row {b} has no response token")
        kl = (lp[b][keep].exp() * (lp[b][keep] - lq[b][keep])).sum(-1)
        out.append(kl.mean())
    return torch.stack(out)
'''),
]
