"""Exercise 7, the reward model: mistakes students make, and correct variants."""

EXERCISE = "ex07_the_reward_model"

DEPENDS = {
    "ex07_rule": ["ex07_rule_tests"],
    "ex07_edge": ["ex07_edge_tests"],
    "ex07_metric": ["ex07_metric_tests"],
    "ex07_model": ["ex07_model_tests"],
    "ex07_train": ["ex07_train_tests"],   # the solution's training loop scores with rm(...) itself
}

_HEAD = '''
def train_reward_head(rm, records, steps=40, lr=1e-2, batch_size=32):
    for p in rm.backbone.parameters():
        p.requires_grad_(FREEZE)
    opt = torch.optim.Adam(PARAMS, lr=LR)
    for step in range(steps):
        chunk = [records[(step * batch_size + j) % len(records)] for j in range(batch_size)]
        prompts = [r["prompt"] for r in chunk]
        c = encode(tok, prompts, [r["chosen"] for r in chunk])
        r = encode(tok, prompts, [r["rejected"] for r in chunk])
        loss = -F.logsigmoid(SIGN * (SCORE(c) - SCORE(r))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rm
'''


def _head(freeze="False", params="rm.head.parameters()", lr="lr", sign="1.0", score="rm(c.input_ids, c.attention_mask)"):
    body = (_HEAD.replace("FREEZE", freeze).replace("PARAMS", params).replace("LR", lr).replace("SIGN", sign)
            .replace("SCORE(c)", score).replace("SCORE(r)", score.replace("c.", "r.")))
    return body


ENTRIES = [
    # ------------------------------------------------------------ rm_loss
    dict(cell="ex07_rule", kind="mistake", name="adds the margin instead of subtracting it", source='''
def rm_loss(r_chosen, r_rejected, margin=0.0):
    rc, rr = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    if rc.shape != rr.shape:
        raise ValueError("lengths differ")
    if rc.size == 0:
        raise ValueError("empty batch")
    return float(np.mean(np.logaddexp(0.0, -(rc - rr + margin))))
'''),
    dict(cell="ex07_rule", kind="mistake", name="log(1 + exp(.)) overflows at large gaps", source='''
def rm_loss(r_chosen, r_rejected, margin=0.0):
    rc, rr = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    if rc.shape != rr.shape:
        raise ValueError("lengths differ")
    if rc.size == 0:
        raise ValueError("empty batch")
    with np.errstate(over="ignore"):
        return float(np.mean(np.log1p(np.exp(-(rc - rr - margin)))))
'''),
    dict(cell="ex07_rule", kind="mistake", name="no length check (one rejected reward broadcasts)", source='''
def rm_loss(r_chosen, r_rejected, margin=0.0):
    rc, rr = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    if rc.size == 0:
        raise ValueError("empty batch")
    return float(np.mean(np.logaddexp(0.0, -(rc - rr - margin))))
'''),
    dict(cell="ex07_rule", kind="mistake", name="sums over the batch instead of averaging", source='''
def rm_loss(r_chosen, r_rejected, margin=0.0):
    rc, rr = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    if rc.shape != rr.shape:
        raise ValueError("lengths differ")
    if rc.size == 0:
        raise ValueError("empty batch")
    return float(np.sum(np.logaddexp(0.0, -(rc - rr - margin))))
'''),
    dict(cell="ex07_rule", kind="mistake", name="returns the per-pair losses as an array", source='''
def rm_loss(r_chosen, r_rejected, margin=0.0):
    rc, rr = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    if rc.shape != rr.shape:
        raise ValueError("lengths differ")
    if rc.size == 0:
        raise ValueError("empty batch")
    return np.logaddexp(0.0, -(rc - rr - margin))
'''),
    dict(cell="ex07_rule", kind="correct", name="torch logsigmoid, .item()", tags=("torch",), source='''
def rm_loss(r_chosen, r_rejected, margin=0.0):
    rc = torch.as_tensor(np.asarray(r_chosen, dtype=np.float64)).reshape(-1)
    rr = torch.as_tensor(np.asarray(r_rejected, dtype=np.float64)).reshape(-1)
    if rc.numel() != rr.numel():
        raise ValueError("r_chosen and r_rejected differ in length")
    if rc.numel() == 0:
        raise ValueError("empty batch")
    return (-F.logsigmoid(rc - rr - margin)).mean().item()
'''),
    # ------------------------------------------------------------ last_token_index
    dict(cell="ex07_edge", kind="mistake", name="number of ones minus one (wrong for left padding and gaps)", source='''
def last_token_index(attention_mask):
    m = np.asarray(attention_mask)
    if (m.sum(axis=1) == 0).any():
        raise ValueError("a row without tokens")
    return m.sum(axis=1) - 1
'''),
    dict(cell="ex07_edge", kind="mistake", name="argmax: the first 1, not the last", source='''
def last_token_index(attention_mask):
    m = np.asarray(attention_mask)
    if (m.sum(axis=1) == 0).any():
        raise ValueError("a row without tokens")
    return np.argmax(m, axis=1)
'''),
    dict(cell="ex07_edge", kind="mistake", name="always the final column", source='''
def last_token_index(attention_mask):
    m = np.asarray(attention_mask)
    if (m.sum(axis=1) == 0).any():
        raise ValueError("a row without tokens")
    return np.full(m.shape[0], m.shape[1] - 1)
'''),
    dict(cell="ex07_edge", kind="mistake", name="argmax of the reversed row, not turned back into a position", source='''
def last_token_index(attention_mask):
    m = np.asarray(attention_mask)
    if (m.sum(axis=1) == 0).any():
        raise ValueError("a row without tokens")
    return np.argmax(m[:, ::-1], axis=1)
'''),
    dict(cell="ex07_edge", kind="mistake", name="no check for a row of padding only", source='''
def last_token_index(attention_mask):
    m = np.asarray(attention_mask) != 0
    return m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)
'''),
    dict(cell="ex07_edge", kind="correct", name="a loop from the end of each row", tags=("loops",), source='''
def last_token_index(attention_mask):
    rows = [list(r) for r in np.asarray(attention_mask)]
    out = []
    for i, r in enumerate(rows):
        idx = [t for t, v in enumerate(r) if v]
        if not idx:
            raise ValueError(f"row {i} has no real token")
        out.append(idx[-1])
    return np.array(out, dtype=np.int64)
'''),
    # ------------------------------------------------------------ pairwise_accuracy
    dict(cell="ex07_metric", kind="mistake", name="ties count as wins (>=)", source='''
def pairwise_accuracy(r_chosen, r_rejected):
    rc, rr = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    if rc.shape != rr.shape or rc.size == 0:
        raise ValueError("bad input")
    return float(np.mean(rc >= rr))
'''),
    dict(cell="ex07_metric", kind="mistake", name="ties count as losses (>)", source='''
def pairwise_accuracy(r_chosen, r_rejected):
    rc, rr = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    if rc.shape != rr.shape or rc.size == 0:
        raise ValueError("bad input")
    return float(np.mean(rc > rr))
'''),
    dict(cell="ex07_metric", kind="mistake", name="zip without a length check", source='''
def pairwise_accuracy(r_chosen, r_rejected):
    s = [1.0 if a > b else (0.5 if a == b else 0.0) for a, b in zip(r_chosen, r_rejected)]
    if not s:
        raise ValueError("no pairs")
    return sum(s) / len(s)
'''),
    dict(cell="ex07_metric", kind="mistake", name="no empty check (nan for an empty set)", source='''
def pairwise_accuracy(r_chosen, r_rejected):
    rc, rr = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    if rc.shape != rr.shape:
        raise ValueError("lengths differ")
    with np.errstate(invalid="ignore"):
        return float(np.mean(np.where(rc > rr, 1.0, np.where(rc == rr, 0.5, 0.0))))
'''),
    dict(cell="ex07_metric", kind="correct", name="(sign + 1) / 2, vectorized", tags=("vectorized",), source='''
def pairwise_accuracy(r_chosen, r_rejected):
    rc, rr = np.asarray(r_chosen, dtype=float).ravel(), np.asarray(r_rejected, dtype=float).ravel()
    if rc.size != rr.size:
        raise ValueError("r_chosen and r_rejected differ in length")
    if rc.size == 0:
        raise ValueError("no pairs")
    s = np.where(rc == rr, 0.0, np.sign(np.where(rc == rr, 1.0, rc - rr)))
    return float(np.mean((s + 1.0) / 2.0))
'''),
    # ------------------------------------------------------------ reward_scores (the model)
    dict(cell="ex07_model", kind="mistake", name="reads the final column (-1): padding on right-padded rows", source='''
def reward_scores(rm, input_ids, attention_mask):
    if bool((attention_mask.sum(-1) == 0).any()):
        raise ValueError("a row without tokens")
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    h = rm.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).last_hidden_state
    return rm.head(h[:, -1]).squeeze(-1)
'''),
    dict(cell="ex07_model", kind="mistake", name="index = number of real tokens - 1 (wrong for left padding)", source='''
def reward_scores(rm, input_ids, attention_mask):
    if bool((attention_mask.sum(-1) == 0).any()):
        raise ValueError("a row without tokens")
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    h = rm.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).last_hidden_state
    last = attention_mask.sum(-1) - 1
    return rm.head(h[torch.arange(h.shape[0]), last]).squeeze(-1)
'''),
    dict(cell="ex07_model", kind="mistake", name="mean over the real tokens instead of the last one", source='''
def reward_scores(rm, input_ids, attention_mask):
    if bool((attention_mask.sum(-1) == 0).any()):
        raise ValueError("a row without tokens")
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    h = rm.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).last_hidden_state
    m = attention_mask.unsqueeze(-1).to(h.dtype)
    return rm.head((h * m).sum(1) / m.sum(1)).squeeze(-1)
'''),
    dict(cell="ex07_model", kind="mistake", name="no position ids: left-padded rows score differently", source='''
def reward_scores(rm, input_ids, attention_mask):
    if bool((attention_mask.sum(-1) == 0).any()):
        raise ValueError("a row without tokens")
    h = rm.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = (torch.arange(attention_mask.shape[1]) * (attention_mask != 0)).max(-1).values
    return rm.head(h[torch.arange(h.shape[0]), last]).squeeze(-1)
'''),
    dict(cell="ex07_model", kind="mistake", name="returns shape (batch, 1)", source='''
def reward_scores(rm, input_ids, attention_mask):
    if bool((attention_mask.sum(-1) == 0).any()):
        raise ValueError("a row without tokens")
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    h = rm.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).last_hidden_state
    last = (torch.arange(attention_mask.shape[1]) * (attention_mask != 0)).max(-1).values
    return rm.head(h[torch.arange(h.shape[0]), last])
'''),
    dict(cell="ex07_model", kind="correct", name="one row at a time, padding cut off, a warning on stderr", tags=("loops", "stderr"), source='''
import warnings

def reward_scores(rm, input_ids, attention_mask):
    out = []
    for ids, attn in zip(input_ids, attention_mask):
        real = ids[attn.bool()]
        if real.numel() == 0:
            raise ValueError("a row of attention_mask has no real token")
        h = rm.backbone(input_ids=real[None]).last_hidden_state[0, -1]
        out.append(rm.head(h)[0])
    warnings.warn("reward_scores: scored row by row")
    return torch.stack(out)
'''),
    # ------------------------------------------------------------ train_reward_head (the run)
    dict(cell="ex07_train", kind="mistake", name="sign flipped: prefers the rejected response", source=_head(sign="-1.0")),
    dict(cell="ex07_train", kind="mistake", name="backbone not frozen: the whole model trained at lr 1e-2",
         source=_head(freeze="True", params="rm.parameters()")),
    dict(cell="ex07_train", kind="mistake", name="learning rate hard-coded to 1e-3 (too few steps to learn)", source=_head(lr="1e-3")),
    dict(cell="ex07_train", kind="mistake", name="trains on the final column's hidden state (padding)", source=_head(
        score="rm.head(rm.backbone(input_ids=c.input_ids, attention_mask=c.attention_mask).last_hidden_state[:, -1]).squeeze(-1)")),
    dict(cell="ex07_train", kind="correct", name="features computed once (frozen backbone), the head trained on them", tags=("vectorized",), source='''
def train_reward_head(rm, records, steps=40, lr=1e-2, batch_size=32):
    for p in rm.backbone.parameters():
        p.requires_grad_(False)
    n = len(records)
    prompts = [r["prompt"] for r in records]
    feats = []
    with torch.no_grad():
        for key in ("chosen", "rejected"):
            b = encode(tok, prompts, [r[key] for r in records])
            pos = (b.attention_mask.cumsum(-1) - 1).clamp(min=0)
            h = rm.backbone(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=pos).last_hidden_state
            last = (torch.arange(b.attention_mask.shape[1]) * b.attention_mask).max(-1).values
            feats.append(h[torch.arange(n), last])
    opt = torch.optim.Adam(rm.head.parameters(), lr=lr)
    for step in range(steps):
        idx = torch.tensor([(step * batch_size + j) % n for j in range(batch_size)])
        d = rm.head(feats[0][idx]).squeeze(-1) - rm.head(feats[1][idx]).squeeze(-1)
        loss = -F.logsigmoid(d).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rm
'''),
]
