"""From committed records to what a paper shows (DESIGN §9, §13): tidy CSVs (tidy), tables (tables), figures
(figures), the verdict table (verdicts), the peers' frontier (pareto), the generated Markdown verdict blocks
(readme_block) and the report command that renders them all (report).

May import: records, taskdata, axformer.stats, axformer.utils. Never models or torch: a report renders from
files alone.
"""
