"""Judge prompts, written for this project from the benchmarks' published descriptions.

Each builder returns chat messages. Templates are plain ``str.format`` strings kept here, in one
place, so a prompt change is one reviewable diff (and changes every cache key it touches, so a
changed prompt is never answered from an old reply).
"""

from __future__ import annotations

# ------------------------------------------------------------------ pairwise (AlpacaEval2, paper)

PAIRWISE_RANK_SYSTEM = (
    "You are a careful evaluator of AI assistants. You read one user instruction and two candidate "
    "responses and decide which response serves the user better: correct, helpful, honest, following "
    "every explicit requirement. Length alone is not a merit.")

PAIRWISE_RANK_USER = """## Instruction
{instruction}

## Response A
{response_a}

## Response B
{response_b}

Compare the two responses. Reply with a JSON object and nothing else:
{{"reason": "<two or three sentences>", "better": "A" or "B"}}"""

# ------------------------------------------------------------------ pairwise (AlpacaEval2, official style)

PREFERENCE_SYSTEM = "You pick the better of two outputs for a user instruction, as a fair human annotator would."

PREFERENCE_USER = """I need to know which of two model outputs better answers an instruction.

Instruction:
{instruction}

Output (m):
{response_a}

Output (M):
{response_b}

Judge on accuracy, helpfulness and how well the instruction is followed. Answer with a single character:
m if Output (m) is better, M if Output (M) is better. Do not write anything else."""

# ------------------------------------------------------------------ WildBench

WILDBENCH_PAIR_USER = """You judge two AI responses to the last user turn of a real conversation.

# Conversation so far
{history}

# Last user query
{query}

# Checklist written for this query
{checklist}

# Response A
{response_a}

# Response B
{response_b}

Go through the checklist for each response, note its concrete strengths and flaws, then compare them.
Use this scale for the final choice:
- "A++": A is much better than B
- "A+": A is slightly better than B
- "A=B": they are about equally good
- "B+": B is slightly better than A
- "B++": B is much better than A
Do not prefer a response only because it is longer.

Reply with one JSON object and nothing else:
{{"analysis_a": "...", "analysis_b": "...", "comparison": "...", "choice": "A++" | "A+" | "A=B" | "B+" | "B++"}}"""

WILDBENCH_SCORE_USER = """You grade one AI response to the last user turn of a real conversation.

# Conversation so far
{history}

# Last user query
{query}

# Checklist written for this query
{checklist}

# Response
{response}

Check the response against the checklist, list its strengths and weaknesses, then give a score from 1 to 10:
1-2 irrelevant or wrong; 3-4 major flaws; 5-6 fair but with clear gaps; 7-8 good, minor issues; 9-10 excellent.

Reply with one JSON object and nothing else:
{{"strengths": "...", "weaknesses": "...", "score": <integer 1-10>}}"""

# ------------------------------------------------------------------ ArenaHard v2

ARENA_SYSTEM_HARD = """You act as an impartial judge of two AI assistants' answers to the user prompt shown below.

Before judging, write your own answer to the prompt. Then compare both assistants' answers with yours:
point out mistakes and inaccurate statements and correct them, and consider whether each answer is helpful
(it addresses the request; if the prompt is ambiguous it asks for clarification rather than guessing),
relevant and concise. Note important information that is missing from an answer.

Finish with exactly one final verdict label:
[[A>>B]] Assistant A is significantly better
[[A>B]] Assistant A is slightly better
[[A=B]] Tie, relatively the same
[[B>A]] Assistant B is slightly better
[[B>>A]] Assistant B is significantly better
For example: "My final verdict is [[A>B]]"."""

ARENA_SYSTEM_CREATIVE = """You act as an impartial judge of two AI assistants' answers to the creative user prompt shown below.

Compare the two answers directly: how well each fulfils the request, its originality, style, coherence and
emotional effect, and whether it respects every stated constraint. Do not write your own answer first.

Finish with exactly one final verdict label:
[[A>>B]] Assistant A is significantly better
[[A>B]] Assistant A is slightly better
[[A=B]] Tie, relatively the same
[[B>A]] Assistant B is slightly better
[[B>>A]] Assistant B is significantly better
For example: "My final verdict is [[B>A]]"."""

ARENA_USER = """<|User Prompt|>
{prompt}

<|The Start of Assistant A's Answer|>
{response_a}
<|The End of Assistant A's Answer|>

<|The Start of Assistant B's Answer|>
{response_b}
<|The End of Assistant B's Answer|>"""

# ------------------------------------------------------------------ Creative Writing v3

CREATIVE_RUBRIC_USER = """You are an experienced fiction editor grading a short piece written for the prompt below.

# Writing prompt
{prompt}

# The piece
{response}

Score the piece on every criterion below from 0 to 20. For the criteria marked (flaw), a HIGHER score means
MORE of the flaw is present (0 = absent). Be demanding: 20 is rare.

{criteria}

First write a short critique (at most 200 words). Then give the scores, one per line, exactly as
"Criterion name: score", in the order listed, after a line that reads [Scores]."""

# ------------------------------------------------------------------ planning traits (paper §5)

TRAITS_EXTRACT_USER = """Below is the private reasoning an AI assistant wrote before answering a user. Describe HOW it plans
its answer: the structure and strategy of the planning, not the topic.

# User prompt
{prompt}

# The assistant's reasoning
{thought}

List 3 to 8 short planning characteristics (each under 15 words). Reply with a JSON list of strings only."""

TRAITS_COMPARE_USER = """Two assistants (A and B) planned answers to the same prompts. For each prompt you see the planning
characteristics of A's and B's reasoning.

{pairs}

Name 1 to 3 concise differences in planning style that hold consistently across these prompts. Phrase each as a
trait that one assistant shows more, e.g. "revisits and refines earlier parts of the plan".
Reply with a JSON list of objects only: [{{"trait": "...", "more_in": "A" or "B"}}]"""

TRAITS_SUMMARIZE_USER = """Several batches of prompts were compared and yielded these candidate differences between the planning
styles of assistants A and B:

{candidates}

Merge duplicates and keep the differences that recur. Reply with a JSON list of at most {max_traits} distinct trait
phrases (strings) only, each describing a planning behaviour."""

TRAITS_HEAD2HEAD_USER = """Two assistants' private reasoning for the same user prompt is shown. Which reasoning shows this trait
more strongly?

# Trait
{trait}

# User prompt
{prompt}

# Reasoning A
{thought_a}

# Reasoning B
{thought_b}

Reply with one JSON object only: {{"winner": "A" | "B" | "tie"}}"""


def user(text: str, system: str | None = None) -> list[dict]:
    """Chat messages for one judge call."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": text}]


def truncate_words(text: str, max_words: int | None) -> str:
    """The reference code cut judged inputs to N words; keep the same bound where a protocol asks."""
    if not max_words:
        return text
    words = text.split(" ")
    return text if len(words) <= max_words else " ".join(words[:max_words]) + " ... (truncated)"
