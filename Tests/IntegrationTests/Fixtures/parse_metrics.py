"""Scrapes BASE/metrics and parses it with prometheus_client's own parser; also reports the status codes of
BASE/healthz and BASE/readyz. Prints {"samples": {"name{label=value,...}": value}, "types": {...},
"healthz": code, "readyz": code} as JSON."""
import json
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def status(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


base = sys.argv[1]
with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
    content_type = response.headers.get("Content-Type")
    text = response.read().decode()
samples, types = {}, {}
for family in text_string_to_metric_families(text):
    types[family.name] = family.type
    for sample in family.samples:
        labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
        samples[f"{sample.name}{{{labels}}}"] = sample.value
print(json.dumps({"samples": samples, "types": types, "content_type": content_type,
                  "healthz": status(base + "/healthz"), "readyz": status(base + "/readyz")}))
