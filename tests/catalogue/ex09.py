"""Exercise 9, the reference policy: mistakes students make, and correct variants."""

EXERCISE = "ex09_the_reference_policy"

DEPENDS = {
    "ex09_rule": ["ex09_rule_tests"],
    "ex09_edge": ["ex09_edge_tests"],
    "ex09_metric": ["ex09_metric_tests"],
    "ex09_model": ["ex09_model_tests"],
}

ENTRIES = [
    # ------------------------------------------------------------ sequence_logprob
    dict(cell="ex09_rule", kind="mistake", name="multiplies by the mask: -inf and nan under it leak", source='''
def sequence_logprob(token_logps, response_mask):
    lp = np.asarray(token_logps, dtype=float)
    m = np.asarray(response_mask, dtype=float)
    if lp.shape != m.shape:
        raise ValueError("shapes differ")
    if (m.sum(axis=1) == 0).any():
        raise ValueError("empty row")
    return (lp * m).sum(axis=1)
'''),
    dict(cell="ex09_rule", kind="mistake", name="averages over the response instead of summing", source='''
def sequence_logprob(token_logps, response_mask):
    lp = np.asarray(token_logps, dtype=float)
    m = np.asarray(response_mask) != 0
    if lp.shape != m.shape:
        raise ValueError("shapes differ")
    if not m.any(axis=1).all():
        raise ValueError("empty row")
    return np.where(m, lp, 0.0).sum(axis=1) / m.sum(axis=1)
'''),
    dict(cell="ex09_rule", kind="mistake", name="no shape check (a mask row broadcasts over every row)", source='''
def sequence_logprob(token_logps, response_mask):
    lp = np.asarray(token_logps, dtype=float)
    m = np.asarray(response_mask) != 0
    if not m.any(axis=1).all():
        raise ValueError("empty row")
    return np.where(m, lp, 0.0).sum(axis=1)
'''),
    dict(cell="ex09_rule", kind="mistake", name="checks for an empty mask over the whole batch, not per row", source='''
def sequence_logprob(token_logps, response_mask):
    lp = np.asarray(token_logps, dtype=float)
    m = np.asarray(response_mask) != 0
    if lp.shape != m.shape:
        raise ValueError("shapes differ")
    if not m.any():
        raise ValueError("no response token")
    return np.where(m, lp, 0.0).sum(axis=1)
'''),
    dict(cell="ex09_rule", kind="mistake", name="zeroes the padding in place (changes the caller's array)", source='''
def sequence_logprob(token_logps, response_mask):
    lp = np.asarray(token_logps)
    m = np.asarray(response_mask) != 0
    if lp.shape != m.shape:
        raise ValueError("shapes differ")
    if not m.any(axis=1).all():
        raise ValueError("empty row")
    lp[~m] = 0.0
    return lp.sum(axis=1)
'''),
    dict(cell="ex09_rule", kind="correct", name="float32 and nansum", tags=("float32", "vectorized", "numpy"), source='''
def sequence_logprob(token_logps, response_mask):
    lp = np.asarray(token_logps, dtype=np.float32)
    m = np.asarray(response_mask).astype(bool)
    if lp.shape != m.shape or lp.ndim != 2:
        raise ValueError("shapes differ")
    if (m.sum(axis=1) == 0).any():
        raise ValueError("empty row")
    return np.nansum(np.where(m, lp, np.float32(np.nan)), axis=1)
'''),
    # ------------------------------------------------------------ support_violations
    dict(cell="ex09_edge", kind="mistake", name="treats a tiny reference probability as zero", source='''
def support_violations(policy_probs, ref_probs):
    p = np.asarray(policy_probs, dtype=float)
    q = np.asarray(ref_probs, dtype=float)
    if p.shape != q.shape:
        raise ValueError("lengths differ")
    return [int(k) for k in np.flatnonzero((p > 0) & (q < 1e-12))]
'''),
    dict(cell="ex09_edge", kind="mistake", name="ignores a tiny policy mass", source='''
def support_violations(policy_probs, ref_probs):
    p = np.asarray(policy_probs, dtype=float)
    q = np.asarray(ref_probs, dtype=float)
    if p.shape != q.shape:
        raise ValueError("lengths differ")
    return [int(k) for k in np.flatnonzero((p > 1e-12) & (q == 0))]
'''),
    dict(cell="ex09_edge", kind="mistake", name="p >= 0: zero in both counts as a violation", source='''
def support_violations(policy_probs, ref_probs):
    p = np.asarray(policy_probs, dtype=float)
    q = np.asarray(ref_probs, dtype=float)
    if p.shape != q.shape:
        raise ValueError("lengths differ")
    return [int(k) for k in np.flatnonzero((p >= 0) & (q == 0))]
'''),
    dict(cell="ex09_edge", kind="mistake", name="zip without a length check", source='''
def support_violations(policy_probs, ref_probs):
    return [k for k, (p, q) in enumerate(zip(policy_probs, ref_probs)) if p > 0 and q == 0]
'''),
    dict(cell="ex09_edge", kind="mistake", name="returns a numpy array", source='''
def support_violations(policy_probs, ref_probs):
    p = np.asarray(policy_probs, dtype=float)
    q = np.asarray(ref_probs, dtype=float)
    if p.shape != q.shape:
        raise ValueError("lengths differ")
    return np.flatnonzero((p > 0) & (q == 0))
'''),
    dict(cell="ex09_edge", kind="correct", name="a loop over pairs", tags=("loops",), source='''
def support_violations(policy_probs, ref_probs):
    p, q = list(policy_probs), list(ref_probs)
    if len(p) != len(q):
        raise ValueError(f"{len(p)} policy probabilities but {len(q)} reference probabilities")
    return [i for i in range(len(p)) if p[i] > 0 and q[i] == 0]
'''),
    # ------------------------------------------------------------ mean_token_kl
    dict(cell="ex09_metric", kind="mistake", name="multiplies by the mask: nan under it leaks", source='''
def mean_token_kl(logp, logp_ref, mask):
    a, b, m = (np.asarray(x, dtype=float) for x in (logp, logp_ref, mask))
    if not (a.shape == b.shape == m.shape):
        raise ValueError("shapes differ")
    if m.sum() == 0:
        raise ValueError("empty mask")
    return float(((a - b) * m).sum() / m.sum())
'''),
    dict(cell="ex09_metric", kind="mistake", name="mean of per-row means", source='''
def mean_token_kl(logp, logp_ref, mask):
    a, b = np.asarray(logp, dtype=float), np.asarray(logp_ref, dtype=float)
    m = np.asarray(mask) != 0
    if not (a.shape == b.shape == m.shape):
        raise ValueError("shapes differ")
    if m.sum() == 0:
        raise ValueError("empty mask")
    rows = [np.where(mr, ar - br, 0.0).sum() / mr.sum() for ar, br, mr in zip(a, b, m) if mr.any()]
    return float(np.mean(rows))
'''),
    dict(cell="ex09_metric", kind="mistake", name="reference minus policy (the wrong direction)", source='''
def mean_token_kl(logp, logp_ref, mask):
    a, b = np.asarray(logp, dtype=float), np.asarray(logp_ref, dtype=float)
    m = np.asarray(mask) != 0
    if not (a.shape == b.shape == m.shape):
        raise ValueError("shapes differ")
    if m.sum() == 0:
        raise ValueError("empty mask")
    return float(np.where(m, b - a, 0.0).sum() / m.sum())
'''),
    dict(cell="ex09_metric", kind="mistake", name="divides by every position, not by the masked ones", source='''
def mean_token_kl(logp, logp_ref, mask):
    a, b = np.asarray(logp, dtype=float), np.asarray(logp_ref, dtype=float)
    m = np.asarray(mask) != 0
    if not (a.shape == b.shape == m.shape):
        raise ValueError("shapes differ")
    if m.sum() == 0:
        raise ValueError("empty mask")
    return float(np.where(m, a - b, 0.0).mean())
'''),
    dict(cell="ex09_metric", kind="mistake", name="no empty-mask check (returns nan)", source='''
def mean_token_kl(logp, logp_ref, mask):
    a, b = np.asarray(logp, dtype=float), np.asarray(logp_ref, dtype=float)
    m = np.asarray(mask) != 0
    if not (a.shape == b.shape == m.shape):
        raise ValueError("shapes differ")
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.where(m, a - b, 0.0).sum() / m.sum())
'''),
    dict(cell="ex09_metric", kind="correct", name="nanmean over the selected tokens, float32", tags=("float32", "numpy"), source='''
def mean_token_kl(logp, logp_ref, mask):
    a, b = np.asarray(logp, dtype=np.float32), np.asarray(logp_ref, dtype=np.float32)
    m = np.asarray(mask).astype(bool)
    if a.shape != b.shape or a.shape != m.shape:
        raise ValueError("shapes differ")
    if not m.any():
        raise ValueError("the mask selects nothing")
    return float(np.nanmean(np.where(m, a - b, np.nan)))
'''),
    dict(cell="ex09_model", kind="mistake", name="no one-token shift: logits at t scored against token t", source='''
def response_logprobs(model, input_ids, attention_mask, response_mask):
    if input_ids.shape != attention_mask.shape or input_ids.shape != response_mask.shape:
        raise ValueError("shapes differ")
    if bool((response_mask[:, 1:].sum(-1) == 0).any()):
        raise ValueError("empty response")
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logp = torch.log_softmax(model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits.float(), -1)
    tok_lp = logp.gather(-1, input_ids.unsqueeze(-1)).squeeze(-1)
    return (tok_lp * response_mask).sum(-1)
'''),
    dict(cell="ex09_model", kind="mistake", name="the prompt in the sum (attention mask instead of the response mask)", source='''
def response_logprobs(model, input_ids, attention_mask, response_mask):
    if input_ids.shape != attention_mask.shape or input_ids.shape != response_mask.shape:
        raise ValueError("shapes differ")
    if bool((response_mask[:, 1:].sum(-1) == 0).any()):
        raise ValueError("empty response")
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits[:, :-1].float()
    tok_lp = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (tok_lp * attention_mask[:, 1:]).sum(-1)
'''),
    dict(cell="ex09_model", kind="mistake", name="no position ids: left-padded rows read shifted positions", source='''
def response_logprobs(model, input_ids, attention_mask, response_mask):
    if input_ids.shape != attention_mask.shape or input_ids.shape != response_mask.shape:
        raise ValueError("shapes differ")
    if bool((response_mask[:, 1:].sum(-1) == 0).any()):
        raise ValueError("empty response")
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    tok_lp = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (tok_lp * response_mask[:, 1:]).sum(-1)
'''),
    dict(cell="ex09_model", kind="mistake", name="drops the end-of-sequence token", source='''
def response_logprobs(model, input_ids, attention_mask, response_mask):
    if input_ids.shape != attention_mask.shape or input_ids.shape != response_mask.shape:
        raise ValueError("shapes differ")
    if bool((response_mask[:, 1:].sum(-1) == 0).any()):
        raise ValueError("empty response")
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits[:, :-1].float()
    tok_lp = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    keep = (response_mask[:, 1:] != 0) & (input_ids[:, 1:] != tok.eos_token_id)
    return (tok_lp * keep).sum(-1)
'''),
    dict(cell="ex09_model", kind="correct", name="one row at a time, padding cut off, float64 log-softmax", tags=("loops", "torch"), source='''
def response_logprobs(model, input_ids, attention_mask, response_mask):
    if not (input_ids.shape == attention_mask.shape == response_mask.shape) or input_ids.dim() != 2:
        raise ValueError("input_ids, attention_mask and response_mask must be 2-D of one shape")
    out = []
    for ids, attn, resp in zip(input_ids, attention_mask, response_mask):
        keep = attn.bool()
        ids, resp = ids[keep], resp[keep]
        if int(resp[1:].sum()) == 0:
            raise ValueError("a row has no response token")
        logits = model(input_ids=ids[None]).logits[0, :-1].double()
        lp = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), ids[1:]]
        out.append(lp[resp[1:].bool()].sum())
    return torch.stack(out).float()
'''),
    dict(cell="ex09_model", kind="correct", name="cross_entropy with ignore_index, a warning on stderr", tags=("vectorized", "stderr", "torch"), source='''
import warnings
import torch.nn.functional as F

def response_logprobs(model, input_ids, attention_mask, response_mask):
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape or input_ids.shape != response_mask.shape:
        raise ValueError("shapes differ")
    if bool((response_mask[:, 1:] == 0).all(-1).any()):
        raise ValueError("a row has no response token")
    warnings.warn("response_logprobs: computing with cross_entropy")
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits[:, :-1]
    labels = input_ids[:, 1:].masked_fill(response_mask[:, 1:] == 0, -100)
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return -nll.sum(-1)
'''),
]
