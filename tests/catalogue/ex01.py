"""Exercise 1, preferences versus demonstrations: mistakes students make, and correct variants."""

EXERCISE = "ex01_preferences_vs_demonstrations"

DEPENDS = {
    "ex01_rule": ["ex01_rule_tests"],
    "ex01_edge": ["ex01_edge_tests"],
    "ex01_metric": ["ex01_metric_tests"],
    "ex01_model": ["ex01_model_tests"],
}

_SFT = '''
def sft_train(model, records, steps=25, lr=1e-3, batch_size=16):
    from preflab.model import position_ids_from
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        chunk = [records[(step * batch_size + j) % len(records)] for j in range(batch_size)]
        batch = encode(tok, [r["prompt"] for r in chunk], [r["response"] for r in chunk])
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=position_ids_from(batch.attention_mask)).logits
        LOSS
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model
'''
_SHIFTED = '''logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        token_logp = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
        mask = MASK
        loss = -(token_logp * mask).sum() / mask.sum()'''


def _sft(mask=None, loss=None):
    return _SFT.replace("LOSS", loss if loss is not None else _SHIFTED.replace("MASK", mask))


ENTRIES = [
    # ------------------------------------------------------------ pairwise_loss
    dict(cell="ex01_rule", kind="mistake", name="log(1 + exp(-d)) overflows at large negative margins", source='''
def pairwise_loss(r_chosen, r_rejected):
    rc, rr = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    if rc.shape != rr.shape:
        raise ValueError("lengths differ")
    if rc.size == 0:
        raise ValueError("no pairs")
    with np.errstate(over="ignore"):
        return np.log(1.0 + np.exp(-(rc - rr)))
'''),
    dict(cell="ex01_rule", kind="mistake", name="sign flipped: -log sigmoid(r_l - r_w)", source='''
def pairwise_loss(r_chosen, r_rejected):
    rc, rr = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    if rc.shape != rr.shape:
        raise ValueError("lengths differ")
    if rc.size == 0:
        raise ValueError("no pairs")
    return np.logaddexp(0.0, rc - rr)
'''),
    dict(cell="ex01_rule", kind="mistake", name="returns the mean over pairs", source='''
def pairwise_loss(r_chosen, r_rejected):
    rc, rr = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    if rc.shape != rr.shape:
        raise ValueError("lengths differ")
    if rc.size == 0:
        raise ValueError("no pairs")
    return np.array([np.logaddexp(0.0, -(rc - rr)).mean()])
'''),
    dict(cell="ex01_rule", kind="mistake", name="no length check (one rejected score broadcasts)", source='''
def pairwise_loss(r_chosen, r_rejected):
    rc, rr = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    if rc.size == 0:
        raise ValueError("no pairs")
    return np.logaddexp(0.0, -(rc - rr))
'''),
    dict(cell="ex01_rule", kind="mistake", name="no check for an empty batch", source='''
def pairwise_loss(r_chosen, r_rejected):
    rc, rr = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    if rc.shape != rr.shape:
        raise ValueError("lengths differ")
    return np.logaddexp(0.0, -(rc - rr))
'''),
    dict(cell="ex01_rule", kind="correct", name="a stable softplus by cases, float32", tags=("float32", "vectorized"), source='''
def pairwise_loss(r_chosen, r_rejected):
    rc, rr = np.asarray(r_chosen, dtype=np.float64), np.asarray(r_rejected, dtype=np.float64)
    if rc.ndim != 1 or rc.shape != rr.shape:
        raise ValueError("r_chosen and r_rejected must be 1-D of one length")
    if rc.size == 0:
        raise ValueError("no pairs")
    x = -(rc - rr)
    out = np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))
    return out.astype(np.float32)
'''),
    # ------------------------------------------------------------ flag_bad_chosen
    dict(cell="ex01_edge", kind="mistake", name="<= : a score exactly at the threshold is flagged", source='''
def flag_bad_chosen(chosen_gold, threshold=0.0):
    g = np.asarray(chosen_gold, dtype=float)
    return [int(k) for k in np.flatnonzero(np.isnan(g) | (g <= threshold))]
'''),
    dict(cell="ex01_edge", kind="mistake", name="nan is not flagged (nan < t is False)", source='''
def flag_bad_chosen(chosen_gold, threshold=0.0):
    g = np.asarray(chosen_gold, dtype=float)
    return [int(k) for k in np.flatnonzero(g < threshold)]
'''),
    dict(cell="ex01_edge", kind="mistake", name="returns a numpy array", source='''
def flag_bad_chosen(chosen_gold, threshold=0.0):
    g = np.asarray(chosen_gold, dtype=float)
    return np.flatnonzero(np.isnan(g) | (g < threshold))
'''),
    dict(cell="ex01_edge", kind="mistake", name="ignores the threshold argument (always 0)", source='''
def flag_bad_chosen(chosen_gold, threshold=0.0):
    g = np.asarray(chosen_gold, dtype=float)
    return [int(k) for k in np.flatnonzero(np.isnan(g) | (g < 0.0))]
'''),
    dict(cell="ex01_edge", kind="correct", name="a loop with math.isnan", tags=("loops",), source='''
def flag_bad_chosen(chosen_gold, threshold=0.0):
    out = []
    for k, v in enumerate(list(np.ravel(chosen_gold))):
        v = float(v)
        if math.isnan(v) or v < threshold:
            out.append(k)
    return out
'''),
    # ------------------------------------------------------------ win_rate
    dict(cell="ex01_metric", kind="mistake", name="strict < tie_tol: a difference exactly at the tolerance is a win", source='''
def win_rate(new_scores, old_scores, tie_tol=0.0):
    a, b = np.asarray(new_scores, dtype=float), np.asarray(old_scores, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("bad input")
    d = a - b
    tie = (np.abs(d) < tie_tol) | (d == 0)
    return float((np.sum((d > 0) & ~tie) + 0.5 * np.sum(tie)) / a.size)
'''),
    dict(cell="ex01_metric", kind="mistake", name="ties count as losses", source='''
def win_rate(new_scores, old_scores, tie_tol=0.0):
    a, b = np.asarray(new_scores, dtype=float), np.asarray(old_scores, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("bad input")
    return float(np.mean(a - b > tie_tol))
'''),
    dict(cell="ex01_metric", kind="mistake", name="ignores the tolerance", source='''
def win_rate(new_scores, old_scores, tie_tol=0.0):
    a, b = np.asarray(new_scores, dtype=float), np.asarray(old_scores, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("bad input")
    return float(np.mean(np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))))
'''),
    dict(cell="ex01_metric", kind="mistake", name="zip without a length check", source='''
def win_rate(new_scores, old_scores, tie_tol=0.0):
    s = [0.5 if abs(x - y) <= tie_tol else (1.0 if x > y else 0.0) for x, y in zip(new_scores, old_scores)]
    if not s:
        raise ValueError("no prompts")
    return sum(s) / len(s)
'''),
    dict(cell="ex01_metric", kind="correct", name="a loop over prompts, a warning on stderr", tags=("loops", "stderr"), source='''
import warnings

def win_rate(new_scores, old_scores, tie_tol=0.0):
    a, b = list(np.ravel(new_scores)), list(np.ravel(old_scores))
    if len(a) != len(b):
        raise ValueError("new_scores and old_scores differ in length")
    if not a:
        raise ValueError("no held-out prompts")
    if tie_tol == 0:
        warnings.warn("win_rate: tie_tol is 0, only exact ties count half")
    wins = 0.0
    for x, y in zip(a, b):
        wins += 0.5 if abs(x - y) <= tie_tol else float(x > y)
    return wins / len(a)
'''),
    # ------------------------------------------------------------ sft_train (the debugging task)
    dict(cell="ex01_model", kind="mistake", name="the colleague's loop unchanged (prompt tokens in the loss)",
         source=_sft(mask="batch.attention_mask[:, 1:].float()")),
    dict(cell="ex01_model", kind="mistake", name="'fixed' by dropping the EOS token from the mask",
         source=_sft(mask="(batch.response_mask[:, 1:] * (batch.input_ids[:, 1:] != tok.eos_token_id)).float()")),
    dict(cell="ex01_model", kind="mistake", name="'fixed' the mask but removed the one-token shift", source=_sft(loss='''logp = torch.log_softmax(logits.float(), dim=-1)
        token_logp = logp.gather(-1, batch.input_ids[:, :, None]).squeeze(-1)
        mask = batch.response_mask.float()
        loss = -(token_logp * mask).sum() / mask.sum()''')),
    dict(cell="ex01_model", kind="mistake", name="the mask inverted: trains the prompt, not the response",
         source=_sft(mask="(batch.attention_mask[:, 1:] - batch.response_mask[:, 1:]).float()")),
    dict(cell="ex01_model", kind="correct", name="Hugging Face labels with -100 on prompt and padding", tags=("torch",), source=_sft(loss='''labels = batch.input_ids.masked_fill(batch.response_mask == 0, -100)
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     position_ids=position_ids_from(batch.attention_mask), labels=labels).loss''')),
    dict(cell="ex01_model", kind="correct", name="per-response mean, then the mean over the batch", tags=("vectorized",), source=_sft(loss='''logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        token_logp = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
        mask = batch.response_mask[:, 1:].float()
        loss = -((token_logp * mask).sum(-1) / mask.sum(-1)).mean()''')),
]
