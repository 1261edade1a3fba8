"""The scheduler: what ``memos consolidate`` does to each cube, from cron.

Modules: ``run`` (one run: plan, apply, record), ``scope`` (what a plan reads),
``plan`` (the actions), ``apply`` (slices, heat blocks, compaction), ``report``
(actions and the report), ``model`` (the chat model and the judge's verdicts);
the rules: ``dedupe``, ``supersede`` (with ``subject``), ``episodes``.

One run, per cube, in this order (each step is a table of ``[consolidate.*]``
in memos.toml, see ``policy``):

1. **expiry**: active units past ``expires_at`` are archived (or forgotten).
2. **duplicates** (``dedupe``): each group merges into its oldest unit, which
   takes the union of the group's tags and sources, the highest importance,
   the summed access counts and the ids it absorbed (``meta.merged``); the
   others are archived with ``meta.merged_into`` pointing to it.
3. **superseded** (``supersede``): a newer fact about the same subject closes
   the older one's validity (``valid_to``, ``meta.superseded_by``) and points
   to it (``supersedes``). The older unit stays active, so "what was it
   before" can still be recalled; recall ranks closed facts lower.
4. **episodes** (off by default): old conversation turns of one session are
   summarised by the chat model into a ``summary`` unit whose sources are the
   turns, which are archived (``meta.summarised_into``).
5. **heat**: the ``activation_top`` hottest units of the cube (pinned ones
   always, units unused for ``cold_after_days`` never) make up its activation
   memory; its KV cache is rebuilt when that set changed. Units that became
   hot are appended to the block (only they are prefilled), and those that
   cooled stay in it, until more than ``activation_top // 2`` have cooled:
   then it is rebuilt in heat order.
6. **compaction**: after a run that changed many units (``COMPACT_CHANGED``, or
   ``COMPACT_SHARE`` of a small store), or when the table has many fragments:
   LanceDB compaction and index refresh, git repack; orphaned cache files are
   removed after every run.

Nothing is ever deleted (expiry with ``action = "delete"`` forgets, which is a
status too), so rollback and ``show --history`` keep working.

**Incremental runs.** A routine run (hourly, from cron) reads only what
changed. After each run that is not a dry run, ``consolidate.json`` in the
store's state dir (``.git/memos``, not versioned; written atomically) records
per cube the commit the run went on from and a fingerprint of what plans
depend on besides the units (the planning steps' policy, the embedding model,
the chat model when it judges, the planner's format). The next run of a cube
with the same fingerprint, whose recorded commit is still in history, is
incremental:

- *what changed*: the unit files added or changed between that commit and
  the one the search table holds now (``git diff-tree`` of ``units/``), less
  those whose change is only placement (access counts, pinning: no step reads
  them), plus the units of actions skipped at the last apply; only the ones
  still active in the cube count;
- *duplicates and superseded facts* compare those units and their nearest
  neighbours in the cube (``NEIGHBOURS`` each through the table's vector
  index, filtered to the cube's active units; ``NEIGHBOURS_WIDE`` when the
  last of those is still about as alike as a step's similarity threshold),
  plus the open units with the same ``meta.subject`` (the rule links those
  whatever their cosine). The steps run unchanged on that small set, so a
  group gets the decisions a full run would make for it (survivor = oldest,
  earliest closer, ...), and a pair of neighbours that a full run's
  approximate search had missed is merged too;
- *expiry* is a filtered read (``expires_at <= now``, active), *episodes* a
  filtered read of the cube's old episodes; *heat* reads a few scalar
  columns of every active unit (``activation.hot_units``), and the chat model
  is loaded only when the hot set changed.

What the run goes on from next time: its own last commit when its commits
follow the commit it saw with no other commit between (what they changed is
what it decided), else the commit it saw. Anything uncertain means a full
run, with the reason in ``--json`` (``scope``): no state, a recorded commit
no longer in history (a purge, a rewrite), another fingerprint, more than
``FULL_MIN_CHANGED`` units and ``FULL_SHARE`` of the cube changed, a last
full run more than ``FULL_EVERY`` ago (what the approximate searches missed
is found then), ``--full``. A cube where a step could not run (no model) is
not moved on, and one whose duplicate passes had not converged goes full.
The search is approximate where a full run's is too: the vector index finds
about 99.5% of the exact neighbours.

**The LLM judge's verdicts** (``judge = "llm"``) are kept in ``judge.jsonl``
in the state dir, keyed by both units' id and version and by the model file
and prompt, so a pair is put to the model once (``--json``: ``judge``,
asked and remembered).

Concurrency: the plan is made from a snapshot without the store's lock (the
slow part: reading vectors, comparing, asking the model), then applied in
slices (``_apply``): each slice is one transaction and one commit, sized to
hold the store's lock about ``SLICE_SECONDS``, and actions that share a unit
go in one slice; a routine run is one slice. Under the lock every unit an
action touches is read again, and an action whose units changed meanwhile is
skipped (the next run looks again); units added meanwhile are simply not in
this run. So ``memos add`` from other processes waits at most for one slice,
never for the planning or the whole run. Two runs never overlap: a second one waits for
the first (``consolidate.lock``), up to the lock timeout, then says who holds it.
A second run right after the first finds nothing to do and makes no commit.
"""
