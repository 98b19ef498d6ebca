"""Tool calling and agents: a tiny GPT learns to act through tools (lecture 7).

Tools (name, description, JSON schema of the arguments, function) sit in an MCP-like registry
(list_tools, call_tool -> {content, is_error}). The model writes a short plan, then a call
    <|tool_call|>{"name": "calculator", "arguments": {"expression": "347 * 89"}}<|end|>
that the agent parses, validates, runs and answers with <|tool_result|>30883<|end|>. The ReAct
loop (Yao et al. 2023) repeats until final_answer, max_steps or a repeated call; every error is an
observation. Constrained decoding masks each token that would leave the call grammar. SFT on expert
traces (Toolformer-style, Schick et al. 2023) puts the loss on the model's turns only:
L = -sum_t m_t log p(x_t | x_<t) / sum_t m_t. A digit is one token per place in its number (as in
Abacus embeddings, McLeish et al. 2024), so copying a result follows tokens that never repeat, and
the plans spell each step out (chain of thought, Wei et al. 2022): "You are cold: read the bedroom
temperature.", then "18 is below 21 and you are cold: set 21.", each word a copy or a lookup.

    python agent.py                     # train on synthetic traces, evaluate held-out tasks
    python agent.py --steps=4000 --n_eval=100   # longer training, more held-out tasks
    python agent.py --resume --plot     # continue out/agent/ckpt.pt; loss in out/agent/loss.png

On CPU you see task success with tools (constrained and free decoding) vs without tools on
multi-digit multiplication, unit conversion and the thermostat ("I'm cold" -> read the
temperature, then set it), the failure taxonomy counts, and one episode.
Left out: a pretrained model (a 2-layer GPT learns five fixed tools from scratch), nested or
array arguments, parallel calls, tool descriptions in the prompt, RL on task success.
"""
import ast
import functools
import itertools
import json
import operator
import os
import random
import re
from collections import namedtuple
from dataclasses import dataclass
from fractions import Fraction

import torch
from tqdm import tqdm

import gpt

@dataclass
class AgentConfig:
    n_train: int = 16000  # synthetic training tasks (each becomes a trace of 1-3 model turns)
    no_tool_frac: float = 0.25  # of those, traces with only final_answer: the model answers alone
    n_eval: int = 30  # held-out tasks per family
    steps: int = 3000  # SFT steps of 16 model turns, gradient norm clipped to 1
    n_embd: int = 96  # model width (2 layers, 4 heads)
    lr: float = 5e-3  # peak AdamW learning rate (cosine decay)
    max_steps: int = 5  # model turns per task before the loop gives up
    ckpt_every: int = 250  # SFT steps between checkpoints (out_dir/ckpt.pt) for --resume
    stop_after: int = 0  # end the run after this many steps, as if pre-empted (0 = never)
    resume: bool = False  # continue from out_dir/ckpt.pt bit for bit, with the same settings
    plot: bool = False  # the SFT loss curve as out_dir/loss.png
    out_dir: str = "out/agent"  # checkpoint, log.jsonl, loss.png
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0  # tasks, initialisation and training order

    def __post_init__(self):  # every field, before any work
        counts = ("n_train", "n_eval", "steps", "max_steps", "ckpt_every")
        problems = [(vars(self)[k] < 1, f"{k}={vars(self)[k]} must be at least 1") for k in counts]
        problems += [
            (self.n_embd < 8 or self.n_embd % 8, f"n_embd={self.n_embd} must be a multiple of 8"
             " (4 heads of an even width: RoPE rotates pairs)"),
            (not 0 <= self.no_tool_frac < 1, f"no_tool_frac={self.no_tool_frac}: in [0, 1)"),
            (self.lr <= 0, f"lr={self.lr} must be positive"),
            (not 0 <= self.stop_after < self.steps,
             f"stop_after={self.stop_after} must be 0 (off) or below steps={self.steps}"),
            (os.path.isfile(self.out_dir), f"out_dir={self.out_dir!r} is a file: pass a folder")]
        for bad, error in problems:
            if bad:
                raise ValueError(error)

GPU = dict(n_eval=200, steps=6000, n_embd=256)  # the defaults that change on CUDA

# ----------------------------------------------------------------------------- tools

class ToolError(Exception):
    """A tool refusing its input: an is_error observation for the model."""

Tool = namedtuple("Tool", ["name", "description", "parameters", "fn"])  # parameters: JSON schema
TYPES = {"string": str, "integer": int, "number": (int, float)}  # JSON schema type -> Python's

def validate(arguments, schema):
    """Each problem of arguments under a flat JSON schema as a sentence saying what to fix."""
    if not isinstance(arguments, dict):
        return [f"arguments must be a JSON object, got {type(arguments).__name__}"]
    properties = schema.get("properties", {})
    problems = [f"missing required argument {key!r}" for key in schema.get("required", [])
                if key not in arguments]
    for key, value in arguments.items():
        spec = properties.get(key)
        if spec is None:
            problems.append(f"unknown argument {key!r}; expected {sorted(properties)}")
        elif spec.get("type") not in TYPES:
            raise ValueError(f"schema of {key!r} has type {spec.get('type')!r}; "
                             f"validate checks only {sorted(TYPES)}")
        elif isinstance(value, bool) or not isinstance(value, TYPES[spec["type"]]):  # JSON true
            problems.append(f"argument {key!r} must be {spec['type']}, got {json.dumps(value)}")
        elif value not in spec.get("enum", [value]):
            problems.append(f"argument {key!r} must be one of {spec['enum']}, got "
                            f"{json.dumps(value)}")
    return problems

class ToolRegistry:
    """MCP-like list_tools() and call_tool(name, arguments); every failure is an is_error result."""

    def __init__(self, tools):
        self.tools = {t.name: t for t in tools}

    def list_tools(self):
        return [{"name": t.name, "description": t.description, "inputSchema": t.parameters}
                for t in self.tools.values()]

    def call_tool(self, name, arguments):
        if name not in self.tools:
            return dict(content=f"unknown tool {name!r}; available tools: {', '.join(self.tools)}",
                        is_error=True, error="unknown_tool")
        try:  # a tool's failure (or a schema validate cannot check) is an observation, not a crash
            problems = validate(arguments, self.tools[name].parameters)
            if problems:
                return dict(content=f"invalid arguments for {name}: " + "; ".join(problems),
                            is_error=True, error="invalid_arguments")
            return dict(content=str(self.tools[name].fn(**arguments)), is_error=False, error=None)
        except Exception as e:
            return dict(content=f"{name} failed: {e}", is_error=True, error="tool_error")

def fmt(x):
    """Numbers as tools print them: exact integers, otherwise 2 decimals without trailing zeros."""
    x = Fraction(x)
    return str(x.numerator) if x.denominator == 1 else f"{float(x):.2f}".rstrip("0").rstrip(".")

ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv, ast.UAdd: operator.pos, ast.USub: operator.neg}

def calculate(expression):
    """Exact arithmetic, never eval: of Python's syntax tree only numbers, + - * / and () pass."""
    if len(expression) > 200:
        raise ToolError("expression too long (200 characters at most)")
    text = " ".join(expression.split())  # one line, no indent: what the parser accepts
    only = "only numbers, + - * / and parentheses are allowed"
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise ToolError(f"not arithmetic ({e.msg}): {only}") from None

    def value(node):
        literal = ast.get_source_segment(text, node)
        if isinstance(node, ast.Constant) and re.fullmatch(r"\d+(\.\d+)?", literal):
            return Fraction(literal)  # from the text: 0.1 is 1/10, not the nearest float
        if isinstance(node, ast.UnaryOp) and type(node.op) in ARITHMETIC:
            return ARITHMETIC[type(node.op)](value(node.operand))
        if not isinstance(node, ast.BinOp) or type(node.op) not in ARITHMETIC:
            raise ToolError(f"unexpected {literal!r}: {only}")
        left, right = value(node.left), value(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ToolError("division by zero")
        return ARITHMETIC[type(node.op)](left, right)

    return fmt(value(tree))

UNITS = {  # unit: (dimension, its size in the SI unit)
    "m": ("length", 1), "km": ("length", 1000), "cm": ("length", Fraction(1, 100)),
    "mi": ("length", Fraction("1609.344")), "ft": ("length", Fraction("0.3048")),
    "in": ("length", Fraction("0.0254")), "kg": ("mass", 1), "g": ("mass", Fraction(1, 1000)),
    "lb": ("mass", Fraction("0.45359237")), "oz": ("mass", Fraction("0.028349523125")),
    "C": ("temperature", None), "F": ("temperature", None), "K": ("temperature", None)}
ROOMS = ["living_room", "bedroom", "kitchen", "garage"]

def convert_units(value, from_unit, to_unit):
    """Lengths and masses by factors to the SI unit; temperatures through kelvin."""
    (dim_from, f_from), (dim_to, f_to) = UNITS[from_unit], UNITS[to_unit]
    if dim_from != dim_to:
        raise ToolError(f"cannot convert {from_unit} ({dim_from}) to {to_unit} ({dim_to})")
    value = Fraction(str(value))
    if dim_from != "temperature":
        return fmt(value * f_from / f_to)
    zero = Fraction("273.15")  # 0 C in kelvin
    kelvin = {"C": value + zero, "F": (value - 32) * Fraction(5, 9) + zero, "K": value}[from_unit]
    return fmt({"C": kelvin - zero, "F": (kelvin - zero) * 9 / 5 + 32, "K": kelvin}[to_unit])

class House:
    """The thermostat's world: a temperature per room, setpoints, an offline garage sensor."""

    def __init__(self, temperatures):
        self.temperature, self.setpoint = dict(temperatures), {}

    def get_temperature(self, room):
        return "" if self.temperature.get(room) is None else str(self.temperature[room])

    def set_temperature(self, room, value):
        if not 10 <= value <= 30:
            raise ToolError(f"{value} is outside the thermostat's range of 10 to 30")
        self.setpoint[room] = value
        return f"{room} set to {value}"

def make_registry(house=None):
    """All five tools; with house=None only final_answer (the "no tools" condition)."""
    def schema(**properties):  # every argument is required
        return {"type": "object", "properties": properties, "required": list(properties)}
    final = Tool("final_answer", "Give the final answer to the user and stop.",
                 schema(answer={"type": "string"}), lambda answer: answer)
    if house is None:
        return ToolRegistry([final])
    room = {"type": "string", "enum": ROOMS}
    unit = {"type": "string", "enum": list(UNITS)}
    return ToolRegistry([
        Tool("calculator", "Evaluate arithmetic with + - * / and parentheses.",
             schema(expression={"type": "string"}), calculate),
        Tool("convert_units", "Convert a length, mass or temperature between units.",
             schema(value={"type": "number"}, from_unit=unit, to_unit=unit), convert_units),
        Tool("get_temperature", "Read the current temperature of a room in degrees C (empty if"
             " its sensor is offline).", schema(room=room), house.get_temperature),
        Tool("set_temperature", "Set a room's thermostat, 10 to 30 degrees C.",
             schema(room=room, value={"type": "integer"}), house.set_temperature),
        final])

# ----------------------------------------------------------------------------- the model's turn

TOOL_CALL, END, TOOL_RESULT = "<|tool_call|>", "<|end|>", "<|tool_result|>"

def defuse(text):
    """Text that cannot spell a special marker (each starts "<|"), however nested its attempts."""
    return text.replace("<|", "< |")

def parse_tool_call(text):
    """(thought, name, arguments) of 'thought<|tool_call|>{json}<|end|>', or a ValueError."""
    if TOOL_CALL not in text:
        raise ValueError(f'no tool call: write {TOOL_CALL}{{"name": ..., "arguments": {{...}}}}'
                         + END)
    thought, _, call = text.partition(TOOL_CALL)
    try:
        obj = json.loads(call.removesuffix(END).strip())
    except json.JSONDecodeError as e:
        raise ValueError(f"tool call is not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(obj, dict) or set(obj) != {"name", "arguments"} or \
            not isinstance(obj["name"], str):
        raise ValueError('a tool call must be a JSON object with exactly "name" (a string) and'
                         ' "arguments"')
    if not isinstance(obj["arguments"], dict):
        raise ValueError('"arguments" must be a JSON object')
    return thought.strip(), obj["name"], obj["arguments"]

def format_call(name, arguments):
    return TOOL_CALL + json.dumps({"name": name, "arguments": arguments}) + END

# ----------------------------------------------------------------------------- constrained decoding
# The calls we accept, json.dumps's own layout of a flat object, as a character automaton:
#   {"name": "<tool>", "arguments": {"<key>": <string | number | true | false | null>, ...}}
# A token is allowed when all its characters step, and the call can still be closed in the tokens
# left (every single character is a token in a byte-level BPE, so n characters take <= n tokens).

DIGITS = "0123456789"
KEY = "".join(c for c in map(chr, range(128)) if c.isalnum() or c == "_")
STRING = "".join(c for c in map(chr, range(32, 127)) if c not in '"\\')  # printable ASCII
NUMBER = {"0": "zero"} | dict.fromkeys(DIGITS[1:], "integer")  # -?(0|[1-9][0-9]*)(.[0-9]+)?
NEXT = {', "': "key", "}": "close"}  # after a value: another key, or the end
GRAMMAR = {  # state: {text: next state} once 'arguments": {' is typed; call_automaton adds names
    "object": {"}": "close", '"': "key"},
    "key": dict.fromkeys(KEY, "key+"),  # the key's text does not matter, and states stay few
    "key+": dict.fromkeys(KEY, "key+") | {'": ': "value"},
    "value": {'"': "string", "-": "minus", "true": "after", "false": "after", "null": "after"}
    | NUMBER,
    "string": dict.fromkeys(STRING, "string") | {"\\": "escape", '"': "after"},
    "escape": dict.fromkeys('"\\/bfnrt', "string"),
    "minus": NUMBER,
    "zero": {".": "point"} | NEXT,
    "integer": dict.fromkeys(DIGITS, "integer") | {".": "point"} | NEXT,
    "point": dict.fromkeys(DIGITS, "fraction"),
    "fraction": dict.fromkeys(DIGITS, "fraction") | NEXT,
    "after": NEXT,
    "close": {"}": "done"}}

@functools.cache
def call_automaton(names):
    """{state: {character: next state}} from "start", and each state's fewest characters to
    "done". A text's states are named by the part typed so far, so the names share a trie."""
    headers = {f'{{"name": "{name}", "arguments": {{': "object" for name in names}
    edges = {"done": {}}
    for state, texts in (GRAMMAR | {"start": headers}).items():
        for text, after in texts.items():
            for i, c in enumerate(text):
                target = state + text[:i + 1] if i + 1 < len(text) else after
                edges.setdefault(state + text[:i], {})[c] = target
    need = {"done": 0}
    while len(need) < len(edges):  # breadth first, back from "done"
        n = max(need.values())
        near = [s for s, moves in edges.items() if n in map(need.get, set(moves.values()))]
        need |= {s: n + 1 for s in near if s not in need}
    return edges | {None: {}}, need  # None: where a character could not step

class CallConstraint:
    """allowed_tokens for gpt.generate: a plan of at most max_thought tokens, <|tool_call|>, then
    tokens that keep the call a valid prefix closable within max_call tokens, then <|end|>.
    budget: new tokens in all; GPTPolicy lowers it near the context limit, and the plan yields."""

    def __init__(self, tok, names, vocab_size, max_thought=32, max_call=64):
        self.max_thought, self.max_call = max_thought, max_call
        self.edges, self.need = call_automaton(names)
        self.min_call = self.need["start"] + 1  # its characters, then <|end|>
        if max_call < self.min_call:
            raise ValueError(f"max_call={max_call} cannot hold the shortest call of {names} "
                             f"({self.min_call} tokens with <|end|>): raise max_call")
        self.budget = max_thought + 1 + max_call
        self.call_id, self.end_id = tok.special(TOOL_CALL), tok.special(END)
        texts = {i: tok.decode([i]) for i in range(tok.eot_id)}  # ordinary tokens
        self.texts = {i: t for i, t in texts.items() if t and t.isascii() and "<|" not in t}
        self.bar_first = {i for i, text in self.texts.items() if text[0] == "|"}
        self.vocab_size, self.moves_from = vocab_size, {}  # state -> its moves, computed once

    def __call__(self, generated):  # generated (B, t) -> allowed (B, vocab)
        allowed = torch.zeros(generated.size(0), self.vocab_size, dtype=torch.bool)
        for row, tokens in enumerate(generated.tolist()):
            allowed[row, self.allowed_for(tokens)] = True
        return allowed.to(generated.device)

    def allowed_for(self, tokens):
        # Every special marker starts "<|". No token holds it (__init__), and none starting "|"
        # follows one ending "<", so the plan and strings cannot spell a marker: the turn's text
        # holds exactly the markers its special tokens do, and parses as its ids do.
        last = self.texts.get(tokens[-1], "") if tokens else ""
        banned = self.bar_first if last.endswith("<") else ()
        if self.call_id not in tokens:  # the plan, while the shortest call still fits after it
            plan = len(tokens) < min(self.max_thought, self.budget - 1 - self.min_call)
            return [i for i in self.texts if plan and i not in banned] + [self.call_id]
        start = tokens.index(self.call_id) + 1
        state = functools.reduce(lambda s, t: self.moves(s)[t], tokens[start:], "start")
        if state == "done":
            return [self.end_id]
        left = min(self.max_call, self.budget - start) - (len(tokens) - start) - 1  # after this
        return [i for i, after in self.moves(state).items()
                if self.need[after] + 1 <= left and i not in banned]

    def moves(self, state):
        """{token: the state after it} for each token the call can take from state."""
        if state not in self.moves_from:
            after = {i: functools.reduce(lambda s, c: self.edges[s].get(c), text, state)
                     for i, text in self.texts.items()}
            self.moves_from[state] = {i: s for i, s in after.items() if s}
        return self.moves_from[state]

# ----------------------------------------------------------------------------- the ReAct loop

def system_prompt(registry):
    """Tool names only: a large model would read list_tools()'s specs; ours was trained on them."""
    return "<|system|>tools: " + ", ".join(registry.tools)

def observation(content):
    """Tool output is untrusted text: defused, it cannot spell a special token for the model."""
    return TOOL_RESULT + defuse(content) + END + "<|assistant|>"

def run_agent(policy, task, registry, max_steps=5):
    """ReAct: observe the transcript, policy(transcript) plans and calls, the result is observed;
    until final_answer, a repeated call or max_steps. Calls are (name, arguments, result)."""
    transcript = system_prompt(registry) + "<|user|>" + task + "<|assistant|>"
    calls, seen = [], set()
    episode = dict(answer=None, stop="max_steps", invalid_turns=0, calls=calls)
    for _ in range(max_steps):
        turn = policy(transcript)
        transcript += turn if turn.endswith(END) else turn + END
        try:
            _, name, arguments = parse_tool_call(turn)
        except ValueError as e:
            episode["invalid_turns"] += 1
            transcript += observation(f"error: {e}")
            continue
        key = (name, json.dumps(arguments, sort_keys=True))
        if key in seen:  # the same call again cannot tell the model anything new
            episode["stop"] = "loop"
            break
        seen.add(key)
        result = registry.call_tool(name, arguments)
        calls.append((name, arguments, result))
        if name == "final_answer" and not result["is_error"]:
            episode.update(answer=result["content"], stop="final_answer")
            break
        transcript += observation(result["content"])
    episode["transcript"] = transcript
    return episode

class GPTPolicy:
    """A gpt.py model's greedy turn, constrained to well-formed calls unless constrained=False."""

    def __init__(self, model, tok, registry, constrained=True, max_thought=32, max_call=64):
        self.model, self.tok, self.max_new_tokens = model, tok, max_thought + max_call + 1
        self.constraint = CallConstraint(tok, tuple(registry.tools), model.config.vocab_size,
                                         max_thought, max_call) if constrained else None

    def __call__(self, transcript):
        ids = self.tok.encode(transcript, allow_special=True)
        budget = min(self.max_new_tokens, self.model.config.block_size - len(ids))
        if budget < (1 + self.constraint.min_call if self.constraint else 1):
            return ""  # no room for a (whole) call: an invalid turn, and the loop runs out of steps
        if self.constraint:
            self.constraint.budget = budget
        out = self.model.generate([ids], budget, temperature=0, allowed_tokens=self.constraint,
                                  stop_tokens=(self.tok.special(END),))
        # markers come from the ids; ordinary runs (where free decoding may spell one) are defused
        runs = itertools.groupby(out[0], lambda t: t >= self.tok.eot_id)
        return "".join(self.tok.decode(list(run)) if special else defuse(self.tok.decode(list(run)))
                       for special, run in runs)

# ----------------------------------------------------------------------------- tasks and traces

FAMILIES = ["multiply", "convert", "thermostat"]
CONVERSIONS = [("km", "mi"), ("mi", "km"), ("m", "ft"), ("ft", "m"), ("in", "cm"), ("cm", "in"),
               ("kg", "lb"), ("lb", "kg"), ("g", "oz"), ("oz", "g"), ("C", "F"), ("F", "C")]
WORDING = {  # a task's text is one of these
    "multiply": ["What is {a} * {b}?", "Multiply {a} by {b}.", "Compute {a} times {b}."],
    "convert": ["Convert {v} {f} to {t}.", "How many {t} is {v} {f}?", "What is {v} {f} in {t}?"],
    "cold": ["I'm cold in the {r}.", "The {r} feels chilly."],
    "hot": ["I'm hot in the {r}.", "The {r} is too warm."]}

def make_task(family, rng):
    """A task, its answer, its house and the expert's calls [(thought, tool, arguments)]."""
    temperatures = {room: rng.randint(14, 28) for room in ROOMS} | {"garage": None}
    task = dict(family=family, temperatures=temperatures, setpoint={})
    thought = "Answer with the result."
    if family == "multiply":
        a, b = rng.randint(100, 9999), rng.randint(11, 999)
        task["text"] = rng.choice(WORDING[family]).format(a=a, b=b)
        task["answer"] = str(a * b)
        task["calls"] = [("Use the calculator.", "calculator", {"expression": f"{a} * {b}"})]
    elif family == "convert":
        (f, t), v = rng.choice(CONVERSIONS), rng.choice([rng.randint(1, 500),
                                                         rng.randint(10, 999) / 10])
        task["text"] = rng.choice(WORDING[family]).format(v=v, f=f, t=t)
        task["answer"] = convert_units(v, f, t)
        arguments = {"value": v, "from_unit": f, "to_unit": t}
        task["calls"] = [(f"Convert {v} {f} to {t}.", "convert_units", arguments)]
    else:  # the plans decide in small steps, each word a copy or a lookup of words just written
        room, feeling = rng.choice(ROOMS), rng.choice(["cold", "hot"])
        task["text"] = rng.choice(WORDING[feeling]).format(r=room.replace("_", " "))
        plan = f"You are {feeling}: read the {room} temperature."
        task["calls"] = [(plan, "get_temperature", {"room": room})]
        degrees = temperatures[room]
        side = "at" if degrees in (None, 21) else "below" if degrees < 21 else "above"
        reading = f"{degrees} is {side} 21 and you are {feeling}: "
        if degrees is None:
            task["answer"], thought = f"no reading for the {room}", "The sensor is offline."
        elif (degrees < 21) if feeling == "cold" else (degrees > 21):
            task["setpoint"], task["answer"], thought = {room: 21}, f"{room} set to 21", "Done."
            task["calls"] += [(reading + "set 21.", "set_temperature", {"room": room, "value": 21})]
        else:
            task["answer"], thought = f"{room} is already {degrees}", reading + "leave it."
    task["calls"].append((thought, "final_answer", {"answer": task["answer"]}))
    return task

def trace_pairs(task, with_tools):
    """(prompt, completion) per model turn: tool results sit in prompts, out of the SFT loss."""
    registry = make_registry(House(task["temperatures"]) if with_tools else None)
    alone = "I cannot reach the thermostat" if task["family"] == "thermostat" else task["answer"]
    calls = task["calls"] if with_tools else [("Answer directly.", "final_answer",
                                               {"answer": alone})]
    transcript = system_prompt(registry) + "<|user|>" + task["text"] + "<|assistant|>"
    pairs = []
    for thought, name, arguments in calls:
        turn = thought + format_call(name, arguments)
        pairs.append((transcript, turn))
        transcript += turn + observation(registry.call_tool(name, arguments)["content"])
    return pairs

# Place tokens: the 3 that opens 30883 is another token than the 3 that ends it (see the docstring).
NUMBER = re.compile(r"\d+(?:\.\d+)?")
CHARS = "0123456789."
PLACES = 10  # characters past the 10th stay plain
TAGS = f"{chr(256)}-{chr(255 + len(CHARS) * PLACES)}"  # the letters that stand for them
SPLIT = rf"""[{TAGS}]|'(?:[sdmt]|ll|ve|re)| ?[^\W\d_{TAGS}]+|\d| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
UNTAG = {256 + i: CHARS[i % len(CHARS)] for i in range(len(CHARS) * PLACES)}

def tag(match):
    return "".join(chr(256 + len(CHARS) * k + CHARS.index(c)) if k < PLACES else c
                   for k, c in enumerate(match[0]))

class PlaceTokenizer(gpt.Tokenizer):
    """A BPE over text whose numbers are spelled in place letters; decode gives the digits back."""

    def encode(self, text, allow_special=False):
        return super().encode(NUMBER.sub(tag, text), allow_special)

    def decode(self, ids):
        return super().decode(ids).translate(UNTAG)

    @classmethod
    def train(cls, text, vocab_size):
        ranks = gpt.train_bpe(NUMBER.sub(tag, text), vocab_size, SPLIT)
        missing = [b for b in map(str.encode, map(chr, UNTAG)) if b not in ranks]
        return cls(ranks | {b: len(ranks) + i for i, b in enumerate(missing)}, SPLIT)

# ----------------------------------------------------------------------------- SFT on the traces

def train_agent(cfg, device, log, ckpt=None):
    """A BPE and a gpt.py model SFT-trained on every model turn; None when stop_after ends it."""
    rng, texts = random.Random(cfg.seed), []
    for i in range(cfg.n_train):
        task = make_task(FAMILIES[i % 3], rng)
        texts += trace_pairs(task, with_tools=rng.random() >= cfg.no_tool_frac)
    tok = (PlaceTokenizer.from_state_dict(ckpt["tokenizer"]) if ckpt
           else PlaceTokenizer.train("".join(p + c for p, c in texts[:3000]), 512))
    pairs = [(tok.encode(p, allow_special=True), tok.encode(c, allow_special=True))
             for p, c in texts]
    # RoPE base 1e6, not 1e4: a 24-wide head then has 8 of its 12 pairs turning under 0.02 rad a
    # token (not 6), slow enough to match a digit's place token by content 20-60 tokens back; with
    # 1e4 the later digits of long results were miscopied on seeds 1 and 3 (multiply 17%, 13%)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=384, n_layer=2,
                                  n_head=4, n_embd=cfg.n_embd, rope_base=1e6)).to(device)
    if ckpt:
        model.load_state_dict(ckpt["model"])
    end = cfg.stop_after or cfg.steps

    def on_step(step, loss, state):  # log every step, checkpoint every ckpt_every and at the end
        log(step=step - 1, loss=loss)
        if step % cfg.ckpt_every == 0 or step == end:
            state = state()
            gpt.save_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), model, tok, step, cfg,
                                state["optimizer"], generator=state["generator"])
        return step == end
    resume = ckpt and {k: ckpt[k] for k in ("step", "optimizer", "generator")}
    # gradient norm clipped to 1: unclipped, copying digits formed at step ~1,500 (seed 0) or
    # stalled at half the held-out traces (seed 2); clipped, by step 400-600 on both (4 heads)
    loss = gpt.finetune(model, pairs, cfg.steps, lr=cfg.lr, batch_size=16, seed=cfg.seed,
                        desc="SFT on tool traces", resume=resume, on_step=on_step, grad_clip=1.0)
    print(f"model: gpt.py 2x{cfg.n_embd}, {gpt.count_params(model) / 1e6:.2f}M params;"
          f" {len(pairs)} turns from {cfg.n_train} traces, {end} of {cfg.steps} steps"
          + (f", final loss {loss:.3f}" if not ckpt or ckpt["step"] < end else ""))
    return (model.eval(), tok) if end == cfg.steps else None

# ----------------------------------------------------------------------------- evaluation

TAXONOMY = ["tool_not_called", "invalid_format", "wrong_tool", "hallucinated_tool",
            "wrong_arguments", "invalid_arguments", "tool_error", "empty_result",
            "wrong_use_of_output"]

def classify(episode, task):
    """A failed episode's one failure kind: a made-up tool; else the first expert call not made
    with the expert's result (judged by the last try); else the use of the outputs it had."""
    calls, expert = episode["calls"], make_registry(House(task["temperatures"]))
    if any(result["error"] == "unknown_tool" for _, _, result in calls):
        return "hallucinated_tool"
    foreign = any(name not in [needed for _, needed, _ in task["calls"]] for name, _, _ in calls)
    empty = False
    for k, (_, tool, arguments) in enumerate(task["calls"][:-1]):  # the expert's, final aside
        expected = expert.call_tool(tool, arguments)
        tries = [result for name, _, result in calls if name == tool]
        if expected in tries:  # the same output as the expert's, whatever the spelling ("89*347")
            empty = empty or expected["content"] == ""
        elif tries:
            return tries[-1]["error"] or "wrong_arguments"
        elif foreign:  # a tool the expert never needed, in place of this one
            return "wrong_tool"
        elif k == 0:
            return "invalid_format" if episode["invalid_turns"] else "tool_not_called"
        else:
            break  # an earlier output called for this call and the model did not make it
    return "empty_result" if empty else "wrong_use_of_output"

def evaluate(model, tok, tasks, with_tools, constrained, max_steps):
    """Success rate per family, and failed episodes counted by kind."""
    wins, failures = {f: [] for f in FAMILIES}, dict.fromkeys(TAXONOMY, 0)
    desc = f"eval: {'tools' if with_tools else 'no tools'}{', constrained' if constrained else ''}"
    for task in tqdm(tasks, desc=desc, leave=False):
        house = House(task["temperatures"])
        registry = make_registry(house if with_tools else None)
        policy = GPTPolicy(model, tok, registry, constrained)
        episode = run_agent(policy, task["text"], registry, max_steps)
        ok = episode["answer"] == task["answer"] and house.setpoint == task["setpoint"]
        wins[task["family"]].append(ok)
        if not ok:
            failures[classify(episode, task)] += 1
    return {f: sum(w) / max(len(w), 1) for f, w in wins.items()}, failures

def main(cfg):
    plt = gpt.pyplot(cfg.plot)
    with gpt.bad_input():
        device = gpt.pick_device(cfg.device)
        path = os.path.join(cfg.out_dir, "ckpt.pt")
        ckpt = gpt.load_checkpoint(path) if cfg.resume else None
        if ckpt:  # the settings that do not change the training may
            gpt.check_resume(path, ckpt, cfg, ("n_eval", "max_steps", "ckpt_every", "stop_after",
                                               "resume", "plot", "out_dir", "device"))
    log = gpt.RunLog(cfg.out_dir, ckpt["step"] if ckpt else 0)
    torch.manual_seed(cfg.seed)
    trained = train_agent(cfg, device, log, ckpt)
    if trained is None:
        return print(f"stopped after step {cfg.stop_after}: python agent.py --resume continues")
    model, tok = trained
    if plt:
        gpt.plot_curves(plt, log, ["loss"], os.path.join(cfg.out_dir, "loss.png"))
    rng = random.Random(cfg.seed + 1)  # held-out tasks: fresh numbers, units, rooms, temperatures
    tasks = [make_task(family, rng) for family in FAMILIES for _ in range(cfg.n_eval)]
    conditions = {"tools, constrained": (True, True), "tools, free decoding": (True, False),
                  "no tools": (False, True)}
    results = {name: evaluate(model, tok, tasks, *condition, cfg.max_steps)
               for name, condition in conditions.items()}
    print(f"\ntask success on {cfg.n_eval} held-out tasks per family")
    print(f"{'condition':<22}" + "".join(f"{f:>12}" for f in FAMILIES))
    for name, (wins, _) in results.items():
        print(f"{name:<22}" + "".join(f"{wins[f]:>12.0%}" for f in FAMILIES))
    print(f"\nfailure taxonomy (failed episodes by their one failure kind, of {len(tasks)})")
    print(f"{'failure':<22}" + "".join(f"{name:>22}" for name in results))
    for kind in TAXONOMY:
        print(f"{kind:<22}" + "".join(f"{failures[kind]:>22}" for _, failures in results.values()))
    example = make_task("thermostat", random.Random(3))
    registry = make_registry(House(example["temperatures"]))
    episode = run_agent(GPTPolicy(model, tok, registry), example["text"], registry, cfg.max_steps)
    print("\nexample episode:\n" + episode["transcript"])

if __name__ == "__main__":
    main(gpt.parse_args(AgentConfig, gpu=GPU))
