"""Per-row curation checks, written as polars expressions so that a million rows take seconds.

The order of :data:`REASONS` is the order the checks run in: a row is counted under the first
reason that applies, so every dropped row has exactly one reason and in = kept + Σ dropped holds
by construction. Cheap structural checks come first, the expensive ones (token length, language,
near-duplicates) last, where they see the fewest rows.
"""

from __future__ import annotations

import re

import polars as pl

from rlmt.data.sources import INVALID_JSON, INVALID_UTF8, MISSING_FIELD, NON_STRING_CONTENT, WRONG_TYPE

VALID_ROLES = ("system", "user", "assistant")

EMPTY_MESSAGES = "empty_messages"          # null or [] conversation
INVALID_ROLE = "invalid_role"              # a role outside system/user/assistant (or null)
NULL_CONTENT = "null_content"              # a turn whose content is null
NO_USER_TURN = "no_user_turn"              # assistant/system-only: nothing to answer
MULTI_TURN = "multi_turn"                  # earlier user turns, with keep_multi_turn off
EMPTY_PROMPT = "empty_prompt"              # the last user turn is empty or whitespace
CONTROL_CHARACTERS = "control_characters"  # control characters or U+FFFD (broken encoding upstream)
EXCLUDED_PATTERN = "excluded_pattern"      # matches an exclude_patterns regex
NOT_INCLUDED = "no_include_match"          # include_patterns given and none matches
DUPLICATE = "duplicate"                    # same normalized text as an earlier row
TOO_LONG = "too_long"                      # over max_prompt_tokens in the policy's tokens
LANGUAGE = "language"                      # confidently another language
NEAR_DUPLICATE = "near_duplicate"          # MinHash-similar (verified Jaccard) to an earlier kept row

REASONS = (
    INVALID_UTF8, INVALID_JSON, WRONG_TYPE, MISSING_FIELD, NON_STRING_CONTENT,
    EMPTY_MESSAGES, INVALID_ROLE, NULL_CONTENT, NO_USER_TURN, MULTI_TURN, EMPTY_PROMPT, CONTROL_CHARACTERS,
    EXCLUDED_PATTERN, NOT_INCLUDED, DUPLICATE, TOO_LONG, LANGUAGE, NEAR_DUPLICATE,
)

# C0 controls except tab/newline/carriage return, DEL, and the replacement character.
CONTROL_RE = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F\x{FFFD}]"


def structure(frame: pl.DataFrame, keep_multi_turn: bool) -> pl.DataFrame:
    """Check the conversation's structure and cut trailing assistant turns.

    Adds ``reason`` (first failing structural check, else null), and replaces ``messages`` by the
    conversation up to and including its last user turn.
    """
    msgs = pl.col("messages")
    roles = msgs.list.eval(pl.element().struct.field("role"))
    n = msgs.list.len()
    is_user = roles.list.eval(pl.element() == "user")
    n_user = is_user.list.sum()
    bad_role = roles.list.eval(pl.element().is_in(list(VALID_ROLES)).not_().fill_null(True)).list.any()
    null_content = msgs.list.eval(pl.element().struct.field("content").is_null()).list.any()
    # Index of the last user turn: length - 1 - (position of the first user turn in the reversed list).
    last_user = n - 1 - is_user.list.reverse().list.eval(pl.element().arg_max()).list.first()
    reason = (
        pl.when(pl.col("error").is_not_null()).then(pl.col("error"))
        .when(msgs.is_null() | (n == 0)).then(pl.lit(EMPTY_MESSAGES))
        .when(bad_role).then(pl.lit(INVALID_ROLE))
        .when(null_content).then(pl.lit(NULL_CONTENT))
        .when(n_user == 0).then(pl.lit(NO_USER_TURN))
        .when(pl.lit(not keep_multi_turn) & (n_user > 1)).then(pl.lit(MULTI_TURN))
    )
    out = frame.with_columns(reason.alias("reason"))
    ok = pl.col("reason").is_null()
    trimmed = pl.when(ok).then(msgs.list.head(last_user + 1))
    out = out.with_columns(trimmed.alias("messages"))
    last_content = pl.col("messages").list.last().struct.field("content")
    text = pl.col("messages").list.eval(pl.element().struct.field("content")).list.join("\n\n")
    out = out.with_columns(last_content.alias("prompt"), text.alias("text"))
    return out.with_columns(
        pl.when(ok & (pl.col("prompt").str.strip_chars() == "")).then(pl.lit(EMPTY_PROMPT))
        .when(ok & pl.col("text").str.contains(CONTROL_RE)).then(pl.lit(CONTROL_CHARACTERS))
        .otherwise(pl.col("reason")).alias("reason"))


def check_patterns(patterns: list[str], field: str) -> None:
    """Fail early, naming the bad regex, rather than deep inside polars."""
    for p in patterns:
        try:
            re.compile(p)
        except re.error as err:
            raise ValueError(f"filters.{field}: invalid regex {p!r}: {err}") from None


def patterns(frame: pl.DataFrame, include: list[str], exclude: list[str]) -> pl.DataFrame:
    """Keyword/regex category filters on the prompt text (e.g. to build or remove a math subset)."""
    check_patterns(include, "include_patterns")
    check_patterns(exclude, "exclude_patterns")
    ok = pl.col("reason").is_null()
    reason = pl.col("reason")
    if exclude:
        hit = pl.any_horizontal([pl.col("text").str.contains(p) for p in exclude])
        reason = pl.when(ok & hit).then(pl.lit(EXCLUDED_PATTERN)).otherwise(reason)
    if include:
        hit = pl.any_horizontal([pl.col("text").str.contains(p) for p in include])
        reason = pl.when(pl.col("reason").is_null() & reason.is_null() & ~hit).then(pl.lit(NOT_INCLUDED)) \
            .otherwise(reason)
    return frame.with_columns(reason.alias("reason"))


# Runs of whitespace, or any single whitespace character other than a plain space: replacing only
# these gives the same text as replacing every r"\s+" by " ", but leaves the many single spaces alone.
WHITESPACE_RE = r"\s{2,}|[^\S ]"


def with_normalized_text(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``norm``, the dedup key of eligible rows: roles and contents, NFKC, lowercased, whitespace collapsed.

    NFKC is the identity on ASCII, so it runs only on the rows with other characters.
    """
    turns = pl.col("messages").list.eval(
        pl.element().struct.field("role") + pl.lit(": ") + pl.element().struct.field("content"))
    eligible = frame.filter(pl.col("reason").is_null()).select("_i", turns.list.join("\n").alias("norm"))
    ascii_only = pl.col("norm").str.len_bytes() == pl.col("norm").str.len_chars()
    parts = [eligible.filter(ascii_only),
             eligible.filter(~ascii_only).with_columns(pl.col("norm").str.normalize("NFKC"))]
    norm = (pl.concat(parts).sort("_i")
            .with_columns(pl.col("norm").str.to_lowercase().str.replace_all(WHITESPACE_RE, " ").str.strip_chars()))
    return frame.join(norm, on="_i", how="left", maintain_order="left")


class ExactDuplicates:
    """Streaming exact dedup: a row is a duplicate when its normalized text (``norm``) equals an
    earlier eligible row's, in this batch or any batch seen before; the first one is kept.

    Remembers two independent 64-bit hashes per distinct text (16 bytes a row, not the text), so a
    false duplicate needs a 128-bit collision.
    """

    def __init__(self) -> None:
        self._seen = pl.DataFrame(schema={"h1": pl.UInt64, "h2": pl.UInt64})

    def mark(self, frame: pl.DataFrame) -> pl.DataFrame:
        keys = (frame.filter(pl.col("reason").is_null())
                .select("_i", pl.col("norm").hash(seed=1).alias("h1"), pl.col("norm").hash(seed=2).alias("h2")))
        first = keys.filter(pl.struct("h1", "h2").is_first_distinct())
        new = first.join(self._seen, on=["h1", "h2"], how="anti", maintain_order="left")
        self._seen = pl.concat([self._seen, new.select("h1", "h2")], rechunk=False)
        dup = keys.join(new.select("_i"), on="_i", how="anti")["_i"]
        return frame.with_columns(
            pl.when(pl.col("_i").is_in(dup.implode())).then(pl.lit(DUPLICATE)).otherwise(pl.col("reason"))
            .alias("reason"))
