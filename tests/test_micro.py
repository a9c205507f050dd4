"""embergpt.micro: scalar autograd and the pure-Python GPT, checked against torch (used here, in the tests only),
against finite differences, and end to end through the CLI."""

import ast
import math
import random
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import embergpt.micro as micro
from embergpt.micro import (
    Adam,
    CharTokenizer,
    MicroConfig,
    MicroSettings,
    Value,
    document_loss,
    dot,
    init_params,
    linear,
    parameters,
    sum_values,
    train_and_sample,
)
from embergpt.micro.train import cyclic_gc_paused

NAMES_TINY = ["ava", "bob", "cecilia", "dan", "eve", "abcdefabcdef"]  # the last one is longer than block_size


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "embergpt", *args], capture_output=True, text=True, timeout=120, check=False
    )


# --------------------------------------------------------------------------------- standard library only


def test_micro_imports_neither_torch_nor_numpy_at_run_time():
    code = (
        "import sys, embergpt.micro as m\n"
        "run = m.train_and_sample(['ab', 'ba'], m.MicroSettings(steps=2, samples=2, n_embd=4, n_head=2))\n"
        "assert len(run.samples) == 2\n"
        "print(sorted(name for name in ('torch', 'numpy') if name in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"


def test_micro_sources_import_only_the_standard_library():
    package = Path(micro.__file__).parent
    sources = sorted(package.glob("*.py"))
    assert len(sources) >= 3
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert name.startswith("embergpt.micro") or top in sys.stdlib_module_names or top == "__future__", (
                    f"{path.name} imports {name}"
                )


# --------------------------------------------------------------------------------- Value against torch


def random_graph_grads(seed: int, n_leaves: int = 6, n_ops: int = 60):
    """Build the same random expression DAG with Value and with float64 torch tensors; return both leaf grads."""
    rng = random.Random(seed)
    leaf_data = [rng.uniform(-2.0, 2.0) for _ in range(n_leaves)]
    leaves = [Value(x) for x in leaf_data]
    tleaves = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in leaf_data]
    pool = list(zip(leaves, tleaves))  # (Value, tensor) pairs computing the same number

    def pick(condition=lambda x: True):
        candidates = [pair for pair in pool if condition(pair[0].data)]
        return rng.choice(candidates) if candidates else None

    positive = lambda x: x > 0.2  # noqa: E731
    away_from_zero = lambda x: abs(x) > 0.2  # noqa: E731
    for _ in range(n_ops):
        op = rng.choice(
            ["add", "sub", "mul", "div", "neg", "radd", "rsub", "rmul", "rdiv", "pow", "vpow", "rpow",
             "log", "exp", "relu", "square", "sum", "dot", "linear"]  # fmt: skip
        )
        c = rng.choice([-1.5, 0.5, 2.0, 3])
        a, b = pick(), pick()
        if op == "add":
            out = [(a[0] + b[0], a[1] + b[1])]
        elif op == "sub":
            out = [(a[0] - b[0], a[1] - b[1])]
        elif op == "mul":
            out = [(a[0] * b[0], a[1] * b[1])]
        elif op == "div":
            b = pick(away_from_zero)
            out = [(a[0] / b[0], a[1] / b[1])] if b else []
        elif op == "neg":
            out = [(-a[0], -a[1])]
        elif op == "radd":
            out = [(c + a[0], c + a[1])]
        elif op == "rsub":
            out = [(c - a[0], c - a[1])]
        elif op == "rmul":
            out = [(c * a[0], c * a[1])]
        elif op == "rdiv":
            a = pick(away_from_zero)
            out = [(c / a[0], c / a[1])] if a else []
        elif op == "pow":
            a, k = pick(positive), rng.choice([2, 3, -1, 0.5, -0.5, 1.5])
            out = [(a[0] ** k, a[1] ** k)] if a else []
        elif op == "vpow":
            a = pick(positive)
            out = [(a[0] ** b[0], a[1] ** b[1])] if a else []
        elif op == "rpow":
            base = rng.choice([0.5, 2.0, math.e])
            out = [(base ** a[0], base ** a[1])]
        elif op == "log":
            a = pick(positive)
            out = [(a[0].log(), a[1].log())] if a else []
        elif op == "exp":
            out = [(a[0].exp(), a[1].exp())]
        elif op == "relu":
            out = [(a[0].relu(), a[1].relu())]
        elif op == "square":  # the same node on both sides
            out = [(a[0] * a[0], a[1] * a[1])]
        elif op == "sum":
            terms = [pick() for _ in range(rng.randint(1, 6))]  # may repeat a node
            out = [(sum_values(t[0] for t in terms), sum(t[1] for t in terms))]
        elif op == "dot":
            n = rng.randint(1, 5)
            xs, ys = [pick() for _ in range(n)], [pick() for _ in range(n)]
            out = [(dot([x[0] for x in xs], [y[0] for y in ys]), sum(x[1] * y[1] for x, y in zip(xs, ys)))]
        else:  # linear: a small matrix of pool nodes times a vector of pool nodes
            n_in, n_out = rng.randint(1, 4), rng.randint(1, 3)
            x = [pick() for _ in range(n_in)]
            w = [[pick() for _ in range(n_in)] for _ in range(n_out)]
            values = linear([xi[0] for xi in x], [[wij[0] for wij in row] for row in w])
            out = [(v, sum(wij[1] * xi[1] for wij, xi in zip(row, x))) for v, row in zip(values, w)]
        for value, tensor in out:
            assert value.data == pytest.approx(tensor.item(), rel=1e-12, abs=1e-12)
            if abs(value.data) < 50:  # keep magnitudes tame so exp/pow stay finite
                pool.append((value, tensor))

    # the output depends on the last few nodes and on a few random earlier ones
    roots = pool[-4:] + [rng.choice(pool) for _ in range(3)]
    loss = sum_values(r[0] for r in roots)
    tloss = sum(r[1] for r in roots)
    loss.backward()
    tloss.backward()
    ours = [leaf.grad for leaf in leaves]
    theirs = [0.0 if t.grad is None else t.grad.item() for t in tleaves]
    return ours, theirs, len(pool)


@pytest.mark.parametrize("seed", range(40))
def test_value_gradients_match_torch_float64_on_random_graphs(seed):
    ours, theirs, size = random_graph_grads(seed)
    assert size > 30
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-9)


def test_operators_work_with_numbers_on_both_sides():
    x = Value(3.0)
    assert (x + 1).data == (1 + x).data == 4.0
    assert (x - 1).data == 2.0 and (1 - x).data == -2.0
    assert (x * 2).data == (2 * x).data == 6.0
    assert (x / 2).data == 1.5 and (6 / x).data == 2.0
    assert (x**2).data == 9.0 and (2**x).data == 8.0
    y = (1 - x) * (6 / x) + 2**x  # d/dx = -6/x + (1 - x) * -6/x**2 + 2**x ln 2
    y.backward()
    assert x.grad == pytest.approx(-2.0 + (-2.0) * (-6.0 / 9.0) + 8.0 * math.log(2.0), rel=1e-12)


def test_deep_chain_backward_needs_no_recursion():
    # y_{k+1} = 0.5 * y_k + x, y_0 = x: dy_n/dx = 0.5**n + sum_{k<n} 0.5**k -> 2
    x = Value(0.3)
    y = x
    for _ in range(50_000):
        y = y * 0.5 + x
    assert len(y.topological_order()) == 100_000
    y.backward()
    assert x.grad == pytest.approx(2.0, rel=1e-12)
    assert y.data == pytest.approx(0.6, rel=1e-12)


# --------------------------------------------------------------------------------- the model against torch


def torch_document_loss(params: dict, config: MicroConfig, tokens: list[int]) -> torch.Tensor:
    """The same micro GPT written with whole-sequence tensor ops and a causal mask (no KV cache)."""
    n = min(config.block_size, len(tokens) - 1)
    inputs, targets = torch.tensor(tokens[:n]), torch.tensor(tokens[1 : n + 1])
    H, hd = config.n_head, config.head_dim

    def rmsnorm(x):
        return x * (x.pow(2).mean(-1, keepdim=True) + 1e-5).rsqrt()

    x = rmsnorm(params["wte"][inputs] + params["wpe"][:n])
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    for i in range(config.n_layer):
        h = rmsnorm(x)
        q, k, v = (
            (h @ params[f"layer{i}.attn_{w}"].T).view(n, H, hd).transpose(0, 1) for w in ("wq", "wk", "wv")
        )
        att = ((q @ k.transpose(1, 2)) / math.sqrt(hd)).masked_fill(~mask, float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(0, 1).reshape(n, -1) @ params[f"layer{i}.attn_wo"].T
        x = x + torch.relu(rmsnorm(x) @ params[f"layer{i}.mlp_fc1"].T) @ params[f"layer{i}.mlp_fc2"].T
    return F.cross_entropy(x @ params["lm_head"].T, targets)


def tiny_model(seed: int = 0, std: float = 0.3):
    tokenizer = CharTokenizer.from_docs(NAMES_TINY)
    config = MicroConfig(tokenizer.vocab_size, n_layer=2, n_embd=8, n_head=2, block_size=8)
    return tokenizer, config, init_params(config, random.Random(seed), std=std)


@pytest.mark.parametrize("doc", ["eve", "cecilia", "abcdefabcdef"])
def test_model_loss_and_gradients_match_a_torch_implementation(doc):
    tokenizer, config, params = tiny_model()
    tokens = tokenizer.encode_doc(doc)
    loss = document_loss(params, config, tokens)
    loss.backward()
    tparams = {
        name: torch.tensor([[p.data for p in row] for row in m], dtype=torch.float64, requires_grad=True)
        for name, m in params.items()
    }
    tloss = torch_document_loss(tparams, config, tokens)
    tloss.backward()
    assert loss.data == pytest.approx(tloss.item(), rel=1e-12)
    for name, m in params.items():
        ours = [p.grad for row in m for p in row]
        assert ours == pytest.approx(tparams[name].grad.flatten().tolist(), rel=1e-9, abs=1e-12), name


def test_model_gradients_match_finite_differences():
    tokenizer, config, params = tiny_model(seed=1)
    tokens = tokenizer.encode_doc("abcdefabcdef")  # truncated to block_size positions
    loss = document_loss(params, config, tokens)
    loss.backward()
    rng = random.Random(0)
    checked = [p for m in params.values() for p in rng.sample([p for row in m for p in row], 6)]  # 6 per matrix
    h = 1e-6
    with cyclic_gc_paused():  # only for speed: the test process holds torch's large heap
        for p in checked:
            original = p.data
            p.data = original + h
            up = document_loss(params, config, tokens).data
            p.data = original - h
            down = document_loss(params, config, tokens).data
            p.data = original
            assert p.grad == pytest.approx((up - down) / (2 * h), rel=1e-4, abs=1e-7)


def test_adam_matches_torch_adam():
    rng = random.Random(0)
    start = [rng.gauss(0, 1) for _ in range(20)]
    ours = [Value(x) for x in start]
    theirs = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = Adam(ours, lr=0.01, betas=(0.85, 0.99), eps=1e-8)
    topt = torch.optim.Adam([theirs], lr=0.01, betas=(0.85, 0.99), eps=1e-8, foreach=False)
    for step in range(10):
        grads = [rng.gauss(0, 1) for _ in start]
        lr = 0.01 * (1 - step / 10)
        for p, g in zip(ours, grads):
            p.grad = g
        opt.step(lr=lr)
        theirs.grad = torch.tensor(grads, dtype=torch.float64)
        topt.param_groups[0]["lr"] = lr
        topt.step()
        assert [p.data for p in ours] == pytest.approx(theirs.tolist(), rel=1e-12, abs=1e-14)
        assert all(p.grad == 0.0 for p in ours)


def test_tokenizer_wraps_documents_in_bos():
    tokenizer = CharTokenizer.from_docs(["emma", "ava"])
    assert tokenizer.chars == ["a", "e", "m", "v"] and tokenizer.bos == 4 and tokenizer.vocab_size == 5
    ids = tokenizer.encode_doc("emma")
    assert ids[0] == ids[-1] == tokenizer.bos and tokenizer.decode(ids) == "emma"
    with pytest.raises(ValueError, match="'z'"):
        tokenizer.encode("zed")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_embd": 10, "n_head": 4}, "divisible"),
        ({"steps": 0}, "steps"),
        ({"temperature": 0.0}, "temperature"),
        ({"block_size": -1}, "block_size"),
        ({"lr": -0.1}, "lr"),
    ],
)
def test_bad_settings_raise_one_line_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as excinfo:
        MicroSettings(**kwargs)
    assert "\n" not in str(excinfo.value)


# --------------------------------------------------------------------------------- training and sampling


@pytest.fixture(scope="module")
def names_text():
    from embergpt.data import load_text

    return load_text("builtin:names")


@pytest.fixture(scope="module")
def names_run_and_untrained_samples(names_text):
    settings = MicroSettings(steps=200)
    untrained: list[str] = []

    def sample_before_training(run):  # the initial weights, sampled like the run samples at the end
        rng = random.Random(settings.seed)
        untrained.extend(micro.sample_names(run.params, run.config, run.tokenizer, rng, settings.temperature, 20))

    run = train_and_sample(micro.docs_from_text(names_text), settings, on_start=sample_before_training)
    return run, untrained


@pytest.fixture(scope="module")
def names_run(names_run_and_untrained_samples):
    return names_run_and_untrained_samples[0]


def test_default_model_on_names_has_4192_params(names_run):
    assert names_run.num_docs == 32033
    assert names_run.tokenizer.vocab_size == 27
    assert names_run.num_params == 4192 == len(parameters(names_run.params))


def test_200_steps_reduce_the_mean_loss(names_run):
    losses = names_run.losses
    assert len(losses) == 200
    assert losses[0] == pytest.approx(math.log(27), abs=0.2)  # small random weights: near-uniform predictions
    assert sum(losses[-50:]) / 50 < sum(losses[:50]) / 50 - 0.3


def bigram_nll(names_text: str):
    """Mean per-character NLL (name end included) under add-one-smoothed character bigrams counted from the corpus."""
    pairs: dict[tuple[str, str], int] = {}
    contexts: dict[str, int] = {}
    names = [line.strip() for line in names_text.splitlines() if line.strip()]
    symbols = len(set("".join(names))) + 1  # the characters and the name boundary "."
    for name in names:
        seq = [".", *name, "."]
        for a, b in zip(seq, seq[1:]):
            pairs[a, b] = pairs.get((a, b), 0) + 1
            contexts[a] = contexts.get(a, 0) + 1

    def nll(samples: list[str]) -> float:
        logps = [
            math.log((pairs.get((a, b), 0) + 1) / (contexts.get(a, 0) + symbols))
            for name in samples
            for a, b in zip([".", *name], [*name, "."])
        ]
        return -sum(logps) / len(logps)

    return nll, nll(names)


def test_samples_are_names_from_the_vocabulary(names_run_and_untrained_samples, names_text):
    run, untrained = names_run_and_untrained_samples
    assert len(run.samples) == len(untrained) == 20
    assert all(len(name) < run.config.block_size for name in run.samples)  # every sample ended by itself
    nll, corpus_nll = bigram_nll(names_text)
    # training made the samples name-like: far likelier under the corpus's bigrams than the untrained model's
    # samples, and about as likely as the real names are
    assert nll(run.samples) < nll(untrained) - 1.0
    assert nll(run.samples) < corpus_nll + 0.3


def test_same_seed_same_samples_and_different_seeds_differ():
    def samples(seed):
        settings = MicroSettings(steps=5, n_embd=8, n_head=2, samples=10, seed=seed)
        return train_and_sample(NAMES_TINY * 3, settings).samples

    first = samples(7)
    assert samples(7) == first
    assert samples(8) != first


# --------------------------------------------------------------------------------- CLI and bench


def test_cli_trains_and_prints_samples():
    proc = run_cli("micro", "--steps", "30", "--samples", "5", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "num docs: 32033" in out and "vocab size: 27" in out and "num params: 4192" in out
    assert "step 30 / 30 | loss" in out and "mean of last 30" in out
    assert len([line for line in out.splitlines() if line.startswith("sample ")]) == 5


def test_cli_reads_any_one_document_per_line_source(tmp_path):
    data = tmp_path / "words.txt"
    data.write_text("cat\ndog\n\nbird\n")
    proc = run_cli("micro", "--data", str(data), "--steps", "4", "--n-embd", "8", "--n-head", "2", "--samples", "2")
    assert proc.returncode == 0, proc.stderr
    assert "num docs: 3" in proc.stdout and "vocab size: 10" in proc.stdout


@pytest.mark.parametrize(
    "flags, message", [(["--n-embd", "10"], "n_embd (10) must be divisible by n_head (4)"), (["--steps", "0"], "steps")]
)
def test_cli_bad_flags_give_one_line_errors(flags, message):
    proc = run_cli("micro", *flags)
    assert proc.returncode == 2
    assert proc.stderr.startswith("embergpt micro: error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bench_reports_speed_and_agrees_with_the_textbook_baseline():
    from embergpt.bench import micro as bench

    result = bench.run(Namespace(steps=3, baseline_steps=2))
    assert result["params"] == 4192 and result["steps"] == 3
    assert result["steps_per_s"] > 0 and result["peak_rss_mb"] > 0
    # two independent implementations of the same training produce the same losses
    assert result["textbook_baseline"]["max_abs_loss_diff"] < 1e-9
