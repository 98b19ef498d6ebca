"""Tool calling and agents: a tiny GPT learns to act through tools (lecture 7).

A tool is a name, a description, a JSON schema for its arguments and a function, listed and
called through an MCP-like registry (list_tools, call_tool -> {content, is_error}). The model
writes a short plan, then a call between special tokens,
    <|tool_call|>{"name": "calculator", "arguments": {"expression": "347 * 89"}}<|end|>
which the agent parses, validates against the schema, runs, and answers with an observation
<|tool_result|>30883<|end|>. The ReAct loop (Yao et al. 2023) repeats observe -> plan -> act
until the final_answer tool, max_steps, or a repeated call; every error becomes an observation.
Constrained decoding masks each token that would leave the JSON call grammar, so a call always
parses and names a real tool. The model is SFT-trained (Toolformer-style traces, Schick et al.
2023) with the loss on its own turns only, never on tool outputs.

    python agent.py                     # train on synthetic traces, evaluate held-out tasks
    python agent.py --steps=4000 --n_eval=100   # longer training, more held-out tasks

On CPU (a few minutes) you see task success with tools (constrained and free decoding) vs
without tools on multi-digit multiplication, unit conversion and the thermostat ("I'm cold"
-> read the temperature, then set it), then the failure taxonomy counts.
"""
import ast
import itertools
import json
import operator
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction

import torch
from tqdm import tqdm

import gpt


@dataclass
class AgentConfig:
    n_train: int = 6000  # synthetic training tasks (each becomes a trace of 1-3 model turns)
    no_tool_frac: float = 0.25  # of those, traces where only final_answer exists and the model must answer alone
    n_eval: int = 0  # held-out tasks per family; 0 = 30 on CPU, 200 on CUDA
    steps: int = 0  # SFT steps; 0 = 2000 on CPU, 6000 on CUDA
    n_embd: int = 0  # model width (2 layers, 4 heads); 0 = 96 on CPU, 256 on CUDA
    lr: float = 5e-3  # peak AdamW learning rate (cosine decay)
    max_steps: int = 5  # model turns per task before the loop gives up
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0  # tasks, initialisation and training order

    def __post_init__(self):
        if not 0 <= self.no_tool_frac < 1:
            raise ValueError(f"no_tool_frac={self.no_tool_frac} must be in [0, 1)")
        if self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be at least 1")


# ----------------------------------------------------------------------------- tools

class ToolError(Exception):
    """A tool refusing its input; the agent turns it into an is_error observation."""


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    fn: callable = field(repr=False)


def validate(arguments, schema):
    """Problems with arguments under a flat JSON schema (types, required, enum, no unknown
    keys), each a sentence that says what to fix; [] when valid. Raises ValueError on a schema
    type it cannot check (the tool's fault, not the caller's)."""
    if not isinstance(arguments, dict):
        return [f"arguments must be a JSON object, got {type(arguments).__name__}"]
    properties, problems = schema.get("properties", {}), []
    for key in schema.get("required", []):
        if key not in arguments:
            problems.append(f"missing required argument {key!r}")
    checks = {"string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key, value in arguments.items():
        if key not in properties:
            problems.append(f"unknown argument {key!r}; expected {sorted(properties)}")
            continue
        spec = properties[key]
        if spec.get("type") not in checks:
            raise ValueError(f"schema of {key!r} has type {spec.get('type')!r}; "
                             f"validate checks only {sorted(checks)}")
        if not checks[spec["type"]](value):
            problems.append(f"argument {key!r} must be {spec['type']}, got {json.dumps(value)}")
        elif "enum" in spec and value not in spec["enum"]:
            problems.append(f"argument {key!r} must be one of {spec['enum']}, got {json.dumps(value)}")
    return problems


class ToolRegistry:
    """The MCP-like interface the agent sees: list_tools() and call_tool(name, arguments). A call
    never raises: unknown tools, invalid arguments and tool failures come back as is_error results
    (with `error` naming the kind, for the failure taxonomy)."""

    def __init__(self, tools):
        self.tools = {t.name: t for t in tools}

    def list_tools(self):
        return [{"name": t.name, "description": t.description, "inputSchema": t.parameters} for t in self.tools.values()]

    def call_tool(self, name, arguments):
        if name not in self.tools:
            return dict(content=f"unknown tool {name!r}; available tools: {', '.join(self.tools)}", is_error=True,
                        error="unknown_tool")
        tool = self.tools[name]
        try:  # a tool's failure (or a schema validate cannot check) is an observation, not a crash
            problems = validate(arguments, tool.parameters)
            if problems:
                return dict(content=f"invalid arguments for {name}: " + "; ".join(problems),
                            is_error=True, error="invalid_arguments")
            return dict(content=str(tool.fn(**arguments)), is_error=False, error=None)
        except Exception as e:
            return dict(content=f"{name} failed: {e}", is_error=True, error="tool_error")


def fmt(x):
    """Numbers as tools print them: exact integers, otherwise 2 decimals without trailing zeros."""
    x = Fraction(x)
    return str(x.numerator) if x.denominator == 1 else f"{float(x):.2f}".rstrip("0").rstrip(".")


ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv, ast.UAdd: operator.pos, ast.USub: operator.neg}


def calculate(expression):
    """Arithmetic over exact fractions, never eval: Python's parser reads the expression and only
    numbers, + - * / (and unary + -) and parentheses are evaluated. Anything else (names, calls,
    attributes, '**', '1e3', '_') is refused with a ToolError."""
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


UNITS = {"m": ("length", 1), "km": ("length", 1000), "cm": ("length", Fraction(1, 100)), "mi": ("length", Fraction("1609.344")),
         "ft": ("length", Fraction("0.3048")), "in": ("length", Fraction("0.0254")), "kg": ("mass", 1),
         "g": ("mass", Fraction(1, 1000)), "lb": ("mass", Fraction("0.45359237")), "oz": ("mass", Fraction("0.028349523125")),
         "C": ("temperature", None), "F": ("temperature", None), "K": ("temperature", None)}


def convert_units(value, from_unit, to_unit):
    """Lengths and masses by factors to the SI unit; temperatures through kelvin."""
    (dim_from, f_from), (dim_to, f_to) = UNITS[from_unit], UNITS[to_unit]
    if dim_from != dim_to:
        raise ToolError(f"cannot convert {from_unit} ({dim_from}) to {to_unit} ({dim_to})")
    value = Fraction(str(value))
    if dim_from != "temperature":
        return fmt(value * f_from / f_to)
    kelvin = {"C": value + Fraction("273.15"), "F": (value - 32) * Fraction(5, 9) + Fraction("273.15"), "K": value}[from_unit]
    return fmt({"C": kelvin - Fraction("273.15"), "F": (kelvin - Fraction("273.15")) * Fraction(9, 5) + 32, "K": kelvin}[to_unit])


ROOMS = ["living_room", "bedroom", "kitchen", "garage"]


class House:
    """The simulated environment behind the thermostat tools: a temperature per room, setpoints
    the agent changes, and a garage whose sensor is offline (an empty result, not an error)."""

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
    final = Tool("final_answer", "Give the final answer to the user and stop.",
                 {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}, lambda answer: answer)
    if house is None:
        return ToolRegistry([final])
    room = {"type": "string", "enum": ROOMS}
    unit = {"type": "string", "enum": list(UNITS)}
    return ToolRegistry([
        Tool("calculator", "Evaluate arithmetic with + - * / and parentheses.",
             {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}, calculate),
        Tool("convert_units", "Convert a length, mass or temperature between units.",
             {"type": "object", "properties": {"value": {"type": "number"}, "from_unit": unit, "to_unit": unit},
              "required": ["value", "from_unit", "to_unit"]}, convert_units),
        Tool("get_temperature", "Read the current temperature of a room in degrees C (empty if its sensor is offline).",
             {"type": "object", "properties": {"room": room}, "required": ["room"]}, house.get_temperature),
        Tool("set_temperature", "Set a room's thermostat, 10 to 30 degrees C.",
             {"type": "object", "properties": {"room": room, "value": {"type": "integer"}}, "required": ["room", "value"]},
             house.set_temperature),
        final])


# ----------------------------------------------------------------------------- parsing the model's turn

TOOL_CALL, END, TOOL_RESULT = "<|tool_call|>", "<|end|>", "<|tool_result|>"


def defuse(text):
    """Text that cannot spell a special marker (each starts "<|"), however nested its attempts."""
    return text.replace("<|", "< |")


def parse_tool_call(text):
    """(thought, name, arguments) from a turn 'thought<|tool_call|>{json}<|end|>'. Raises
    ValueError with a message the model can act on when the turn is not a well-formed call."""
    if TOOL_CALL not in text:
        raise ValueError(f"no tool call: write {TOOL_CALL}{{\"name\": ..., \"arguments\": {{...}}}}{END}")
    thought, _, call = text.partition(TOOL_CALL)
    call = call.removesuffix(END).strip()
    try:
        obj = json.loads(call)
    except json.JSONDecodeError as e:
        raise ValueError(f"tool call is not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(obj, dict) or set(obj) != {"name", "arguments"} or not isinstance(obj["name"], str):
        raise ValueError('a tool call must be a JSON object with exactly "name" (a string) and "arguments"')
    if not isinstance(obj["arguments"], dict):
        raise ValueError('"arguments" must be a JSON object')
    return thought.strip(), obj["name"], obj["arguments"]


def format_call(name, arguments):
    return TOOL_CALL + json.dumps({"name": name, "arguments": arguments}) + END


# ----------------------------------------------------------------------------- constrained decoding
# A character-level automaton for the calls we accept, json.dumps's own layout of a flat object:
#   {"name": "<tool>", "arguments": {"<key>": <string | number | true | false | null>, ...}}
# A state is a tuple; step(state, c) is the next state or None. A token is allowed when all its
# characters step, and the call can still be finished in the tokens left (every single character is
# a token in a byte-level BPE, so `chars_to_finish` characters take at most that many tokens).

def step(state, c, names):
    kind = state[0]
    if kind == "lit":  # ("lit", text, i, next): the fixed text must follow
        _, text, i, nxt = state
        return None if c != text[i] else (nxt if i + 1 == len(text) else ("lit", text, i + 1, nxt))
    if kind == "name":  # a prefix of a known tool name
        typed = state[1]
        if c == '"' and typed in names:
            return ("lit", ', "arguments": {', 0, ("object",))
        return ("name", typed + c) if any(n.startswith(typed + c) for n in names) else None
    if kind in ("object", "after"):  # first key or '}' / after a value: ', ' then a key, or '}'
        if c == "}":
            return ("lit", "}", 0, ("done",))
        if kind == "object":
            return ("key", False) if c == '"' else None
        return ("lit", ' "', 0, ("key", False)) if c == "," else None
    if kind == "key":  # ("key", nonempty): the key's text does not matter, and states stay few
        if c == '"' and state[1]:
            return ("lit", ": ", 0, ("value",))
        return ("key", True) if c.isascii() and (c.isalnum() or c == "_") else None
    if kind == "value":
        if c == '"':
            return ("string",)
        if c == "-" or c.isdigit():
            return ("number", c)
        literal = {"t": "true", "f": "false", "n": "null"}.get(c)
        return ("lit", literal, 1, ("after",)) if literal else None
    if kind == "string":
        if c == '"':
            return ("after",)
        if c == "\\":
            return ("escape",)
        return ("string",) if c.isascii() and c.isprintable() else None
    if kind == "escape":
        return ("string",) if c in '"\\/bfnrt' else None
    if kind == "number":  # -?(0|[1-9][0-9]*)(.[0-9]+)?
        typed = state[1]
        if typed[-1].isdigit() and c in ",}":
            return step(("after",), c, names)
        leading_zero = typed.lstrip("-") == "0"
        if c.isdigit() and not leading_zero:
            return ("number", typed + c)
        return ("number", typed + c) if c == "." and typed[-1].isdigit() and "." not in typed else None
    return None  # "done": nothing may follow but <|end|>


def chars_to_finish(state, names):
    """The fewest characters that close a call from this state (the shortest value is 0)."""
    kind = state[0]
    if kind == "lit":
        return len(state[1]) - state[2] + chars_to_finish(state[3], names)
    if kind == "name":  # rest of the shortest matching name, '"', ', "arguments": {', '}}'
        return min(len(n) - len(state[1]) for n in names if n.startswith(state[1])) + 1 + 16 + 2
    if kind == "key":  # '"' (after at least one character), ': ', '0', '}}'
        return (not state[1]) + 1 + 2 + 1 + 2
    if kind == "number":  # a digit if it ends in '-' or '.', then '}}'
        return (not state[1][-1].isdigit()) + 2
    return {"object": 2, "after": 2, "value": 3, "string": 3, "escape": 4, "done": 0}[kind]


CALL_START = ("lit", '{"name": "', 0, ("name", ""))


class CallConstraint:
    """allowed_tokens for gpt.generate. Before <|tool_call|>: any ordinary token (the plan), up to
    max_thought tokens, then <|tool_call|> is forced. After it: only tokens that keep the call a
    valid prefix that can still be closed within max_call tokens; once closed, only <|end|>.
    budget: new tokens in all; GPTPolicy lowers it near the context limit, and the plan yields."""

    def __init__(self, tok, tool_names, vocab_size, max_thought=32, max_call=64):
        self.names, self.max_thought, self.max_call = tuple(tool_names), max_thought, max_call
        self.min_call = chars_to_finish(CALL_START, self.names) + 1  # its characters, then <|end|>
        if max_call < self.min_call:
            raise ValueError(f"max_call={max_call} cannot hold the shortest call of {self.names} "
                             f"({self.min_call} tokens with <|end|>): raise max_call")
        self.budget = max_thought + 1 + max_call
        self.call_id, self.end_id = tok.special(TOOL_CALL), tok.special(END)
        self.texts, self.by_first = {}, {}  # ordinary ASCII token id -> text; first character -> [(id, text)]
        for i in range(tok.eot_id):
            piece = tok.decode_bytes([i])
            if piece and piece.isascii() and b"<|" not in piece:  # see allowed_for
                self.texts[i] = piece.decode()
                self.by_first.setdefault(self.texts[i][0], []).append((i, self.texts[i]))
        self.vocab_size, self.moves_from = vocab_size, {}  # state -> its moves, computed once
        self.last = ([], CALL_START)  # the last call prefix seen and the automaton's state after it
        self.bar_first = {i for i, _ in self.by_first.get("|", [])}

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
        call = tokens[start:]  # decoding adds a token a step: step only the new ones
        done, state = self.last if self.last[0] == call[:len(self.last[0])] else ([], CALL_START)
        for t in call[len(done):]:
            for c in self.texts[t]:
                state = step(state, c, self.names)
        self.last = (call, state)
        if state == ("done",):
            return [self.end_id]
        left = min(self.max_call, self.budget - start) - (len(tokens) - start) - 1  # after this one
        return [i for i, need in self.moves(state) if need + 1 <= left and i not in banned]

    def moves(self, state):
        """[(token, characters that close the call after it)] for each token the call can take."""
        if state not in self.moves_from:
            self.moves_from[state] = []
            for first, group in self.by_first.items():
                if step(state, first, self.names) is None:  # most groups fail on the first character
                    continue
                for i, text in group:
                    s = state
                    for c in text:
                        s = step(s, c, self.names)
                        if s is None:
                            break
                    if s is not None:
                        self.moves_from[state].append((i, chars_to_finish(s, self.names)))
        return self.moves_from[state]


# ----------------------------------------------------------------------------- the ReAct loop

def system_prompt(registry):
    """The tools the model may use. A large model would read the full specs (json of list_tools());
    our tiny one was trained on these tools, so their names keep the context short."""
    return "<|system|>tools: " + ", ".join(registry.tools)


def observation(content):
    """Tool output is untrusted text: defused, it cannot spell a special token for the model."""
    return TOOL_RESULT + defuse(content) + END + "<|assistant|>"


def run_agent(policy, task, registry, max_steps=5):
    """Observe (the transcript) -> plan and act (policy writes a thought and a call) -> the result
    is the next observation. Ends on final_answer, on a repeated identical call (a loop) or after
    max_steps turns. policy(transcript) -> the model's next turn as text. Returns the episode:
    answer, stop reason, events, the calls made [(name, arguments, result)] and the transcript."""
    transcript = system_prompt(registry) + "<|user|>" + task + "<|assistant|>"
    events, calls, seen = [], [], set()
    episode = dict(answer=None, stop="max_steps", events=events, calls=calls)
    for _ in range(max_steps):
        turn = policy(transcript)
        transcript += turn if turn.endswith(END) else turn + END
        try:
            _, name, arguments = parse_tool_call(turn)
        except ValueError as e:
            events.append("invalid_format")
            transcript += observation(f"error: {e}")
            continue
        key = (name, json.dumps(arguments, sort_keys=True))
        if key in seen:  # the same call again cannot tell the model anything new
            events.append("loop")
            episode["stop"] = "loop"
            break
        seen.add(key)
        result = registry.call_tool(name, arguments)
        calls.append((name, arguments, result))
        if result["error"]:
            events.append(result["error"])
        elif name != "final_answer" and result["content"] == "":
            events.append("empty_result")
        if name == "final_answer" and not result["is_error"]:
            episode.update(answer=result["content"], stop="final_answer")
            break
        transcript += observation(result["content"])
    else:
        events.append("max_steps")
    episode["transcript"] = transcript
    return episode


class GPTPolicy:
    """A gpt.py model as the agent's policy: greedy decoding of one turn, constrained to
    well-formed calls of this registry's tools unless constrained=False."""

    def __init__(self, model, tok, registry, constrained=True, max_thought=32, max_call=64):
        self.model, self.tok, self.max_new_tokens = model, tok, max_thought + max_call + 1
        self.constraint = CallConstraint(tok, registry.tools, model.config.vocab_size, max_thought, max_call) \
            if constrained else None

    def __call__(self, transcript):
        ids = self.tok.encode(transcript, allow_special=True)
        budget = min(self.max_new_tokens, self.model.config.block_size - len(ids))
        if budget < (1 + self.constraint.min_call if self.constraint else 1):
            return ""  # no room for a (whole) call: an invalid turn, and the loop runs out of steps
        if self.constraint:
            self.constraint.budget = budget
        out = self.model.generate([ids], budget, temperature=0, stop_tokens=(self.tok.special(END),),
                                  allowed_tokens=self.constraint)
        # markers come from the ids; ordinary runs (where free decoding may spell one) are defused
        runs = itertools.groupby(out[0], lambda t: t >= self.tok.eot_id)
        return "".join(self.tok.decode(list(run)) if special else defuse(self.tok.decode(list(run)))
                       for special, run in runs)


# ----------------------------------------------------------------------------- tasks and traces

CONVERSIONS = [("km", "mi"), ("mi", "km"), ("m", "ft"), ("ft", "m"), ("in", "cm"), ("cm", "in"), ("kg", "lb"),
               ("lb", "kg"), ("g", "oz"), ("oz", "g"), ("C", "F"), ("F", "C")]


def make_task(family, rng):
    """A task with its checkable answer, the house it runs in, and the expert's calls
    [(thought, tool, arguments)] with tools (the trace we imitate)."""
    temperatures = {room: rng.randint(14, 28) for room in ROOMS} | {"garage": None}
    task = dict(family=family, temperatures=temperatures, setpoint={})
    if family == "multiply":
        a, b = rng.randint(100, 9999), rng.randint(11, 999)
        task["text"] = rng.choice(["What is {a} * {b}?", "Multiply {a} by {b}.", "Compute {a} times {b}."]).format(a=a, b=b)
        task["answer"] = str(a * b)
        task["calls"] = [("Use the calculator.", "calculator", {"expression": f"{a} * {b}"})]
    elif family == "convert":
        (f, t), v = rng.choice(CONVERSIONS), rng.choice([rng.randint(1, 500), rng.randint(10, 999) / 10])
        task["text"] = rng.choice(["Convert {v} {f} to {t}.", "How many {t} is {v} {f}?", "What is {v} {f} in {t}?"]).format(v=v, f=f, t=t)
        task["answer"] = convert_units(v, f, t)
        task["calls"] = [("Use the unit converter.", "convert_units", {"value": v, "from_unit": f, "to_unit": t})]
    else:
        room, feeling = rng.choice(ROOMS), rng.choice(["cold", "hot"])
        phrases = {"cold": ["I'm cold in the {r}.", "The {r} feels chilly."], "hot": ["I'm hot in the {r}.", "The {r} is too warm."]}
        task["text"] = rng.choice(phrases[feeling]).format(r=room.replace("_", " "))
        task["calls"] = [(f"Read the {room} temperature.", "get_temperature", {"room": room})]
        degrees = temperatures[room]
        if degrees is None:
            task["answer"], thought = f"no reading for the {room}", "The sensor is offline."
        elif (degrees < 21) if feeling == "cold" else (degrees > 21):
            task["setpoint"], task["answer"] = {room: 21}, f"{room} set to 21"
            task["calls"].append((f"It is {degrees}, set 21.", "set_temperature", {"room": room, "value": 21}))
            thought = "Done."
        else:
            task["answer"], thought = f"{room} is already {degrees}", f"It is {degrees}, leave it."
        task["calls"].append((thought, "final_answer", {"answer": task["answer"]}))
        return task
    task["calls"].append(("Answer with the result.", "final_answer", {"answer": task["answer"]}))
    return task


def trace_pairs(task, with_tools):
    """(prompt, completion) text pairs, one per model turn: the completion is the turn, and tool
    results only ever sit in the prompt, so the SFT loss never trains on them."""
    house = House(task["temperatures"])
    registry = make_registry(house if with_tools else None)
    alone = "I cannot reach the thermostat" if task["family"] == "thermostat" else task["answer"]  # no tools: answer alone
    calls = task["calls"] if with_tools else [("Answer directly.", "final_answer", {"answer": alone})]
    transcript, pairs = system_prompt(registry) + "<|user|>" + task["text"] + "<|assistant|>", []
    for thought, name, arguments in calls:
        turn = thought + format_call(name, arguments)
        pairs.append((transcript, turn))
        transcript += turn + observation(registry.call_tool(name, arguments)["content"])
    return pairs


FAMILIES = ["multiply", "convert", "thermostat"]
DIGIT_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+|\d| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""  # one token per digit: numbers copy digit by digit


def train_agent(cfg, device):
    """A byte-level BPE on the traces and a 2-layer gpt.py model SFT-trained on every model turn."""
    rng = random.Random(cfg.seed)
    texts = []
    for i in range(cfg.n_train):
        task = make_task(FAMILIES[i % 3], rng)
        texts += trace_pairs(task, with_tools=rng.random() >= cfg.no_tool_frac)
    tok = gpt.Tokenizer(gpt.train_bpe("".join(p + c for p, c in texts[:3000]), 512, DIGIT_SPLIT), DIGIT_SPLIT, "bpe")
    pairs = [(tok.encode(p, allow_special=True), tok.encode(c, allow_special=True)) for p, c in texts]
    cuda = device.startswith("cuda")
    n_embd = cfg.n_embd or (256 if cuda else 96)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=384, n_layer=2, n_head=4,
                                  n_embd=n_embd)).to(device)
    steps = cfg.steps or (6000 if cuda else 2000)
    loss = gpt.finetune(model, pairs, steps, lr=cfg.lr, batch_size=16, seed=cfg.seed, desc="SFT on tool traces")
    print(f"model: gpt.py 2x{n_embd}, {gpt.count_params(model) / 1e6:.2f}M params; {len(pairs)} turns from "
          f"{cfg.n_train} traces, {steps} steps, final loss {loss:.3f}")
    return model, tok


TAXONOMY = ["tool_not_called", "invalid_format", "wrong_tool", "hallucinated_tool",
            "wrong_arguments", "invalid_arguments", "tool_error", "empty_result",
            "wrong_use_of_output"]


def classify(episode, task):
    """The one failure kind of a failed episode, judged against the expert's calls: a tool that
    does not exist; else the first expert call the model did not make with the expert's result
    (its last try invalid, failing, or schema-valid with wrong values, e.g. a miscopied digit; or
    never tried, another tool in its place); else how it used the outputs it had."""
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
            return "invalid_format" if "invalid_format" in episode["events"] else "tool_not_called"
        else:
            break  # an earlier output called for this call and the model did not make it
    return "empty_result" if empty else "wrong_use_of_output"


def evaluate(model, tok, tasks, with_tools, constrained, max_steps):
    """Success rate per family, and failed episodes counted by their one failure kind (classify)."""
    wins, failures = {f: [] for f in FAMILIES}, dict.fromkeys(TAXONOMY, 0)
    desc = f"eval: {'tools' if with_tools else 'no tools'}{', constrained' if constrained else ''}"
    for task in tqdm(tasks, desc=desc, leave=False):
        house = House(task["temperatures"])
        registry = make_registry(house if with_tools else None)
        episode = run_agent(GPTPolicy(model, tok, registry, constrained), task["text"], registry, max_steps)
        ok = episode["answer"] == task["answer"] and house.setpoint == task["setpoint"]
        wins[task["family"]].append(ok)
        if not ok:
            failures[classify(episode, task)] += 1
    return {f: sum(w) / max(len(w), 1) for f, w in wins.items()}, failures


def main(cfg):
    device = gpt.pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model, tok = train_agent(cfg, device)
    rng = random.Random(cfg.seed + 1)  # held-out tasks: fresh numbers, units, rooms and temperatures
    n_eval = cfg.n_eval or (200 if device.startswith("cuda") else 30)
    tasks = [make_task(family, rng) for family in FAMILIES for _ in range(n_eval)]
    conditions = {"tools, constrained": (True, True), "tools, free decoding": (True, False),
                  "no tools": (False, True)}
    results = {}
    for name, (with_tools, constrained) in conditions.items():
        results[name] = evaluate(model, tok, tasks, with_tools, constrained, cfg.max_steps)
    print(f"\ntask success on {n_eval} held-out tasks per family")
    print(f"{'condition':<22}" + "".join(f"{f:>12}" for f in FAMILIES))
    for name, (wins, _) in results.items():
        print(f"{name:<22}" + "".join(f"{wins[f]:>12.0%}" for f in FAMILIES))
    print(f"\nfailure taxonomy (failed episodes by their one failure kind, of {len(tasks)})")
    print(f"{'failure':<22}" + "".join(f"{name:>22}" for name in results))
    for kind in TAXONOMY:
        print(f"{kind:<22}" + "".join(f"{failures[kind]:>22}" for _, failures in results.values()))
    example = make_task("thermostat", random.Random(3))
    house = House(example["temperatures"])
    registry = make_registry(house)
    print("\nexample episode:\n" + run_agent(GPTPolicy(model, tok, registry), example["text"], registry, cfg.max_steps)["transcript"])


if __name__ == "__main__":
    main(gpt.parse_args(AgentConfig))
