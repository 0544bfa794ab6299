"""Parses Prometheus text from stdin with prometheus_client's own parser and prints every sample as JSON:
{"name{label=value,...}": value}, plus the metric families' types under "__types__"."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples, types = {}, {}
for family in text_string_to_metric_families(sys.stdin.read()):
    types[family.name] = family.type
    for sample in family.samples:
        labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
        samples[f"{sample.name}{{{labels}}}"] = sample.value
samples["__types__"] = types
print(json.dumps(samples))
