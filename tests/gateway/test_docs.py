"""The /docs page, the services' documents and the AsyncAPI export (in process)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kourier.gateway import StaticCatalog, asyncapi_document, describe_asyncapi
from kourier.gateway.catalog import ServiceView
from kourier.gateway.docs import ASSETS
from tests.gateway.conftest import Stack, http
from tests.processes import ROOT

pytestmark = pytest.mark.timeout(60)

#: Installed by scripts/setup from the AsyncAPI project's own npm package.
SCHEMA = ROOT / ".venv/npm/node_modules/@asyncapi/specs/schemas/3.0.0.json"


def asyncapi_schema() -> dict[str, Any]:
    if not SCHEMA.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SCHEMA.relative_to(ROOT)} is missing: scripts/setup installs it")
        pytest.skip("the AsyncAPI 3.0 schema is not installed: run scripts/setup (needs npm)")
    schema: dict[str, Any] = json.loads(SCHEMA.read_text())
    return schema


def validate(document: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(asyncapi_schema()).validate(document)


async def test_docs_page_lists_the_services_and_loads_swagger_ui_locally(stack: Stack) -> None:
    """The page names each service, and every asset it loads is served by the gateway."""
    gateway = stack.gateway(catalog=StaticCatalog(["shop", "other"]))
    async with http(gateway) as client:
        page = (await client.get("/docs")).text
        for asset in ASSETS:
            response = await client.get(f"/docs/static/{asset}")
            assert response.status_code == 200, asset
            assert len(response.content) > 100
        assert (await client.get("/docs/static/../pyproject.toml")).status_code == 404
    assert 'data-service="shop"' in page
    assert 'data-service="other"' in page
    assert "not known (no registry)" in page
    # Every script and style sheet is a path on this gateway: nothing from a CDN.
    assert 'src="/docs/static/swagger-ui-bundle.js"' in page
    assert "https://" not in page and "http://" not in page


@dataclass(frozen=True)
class Instance:
    """An instance as the service registry reports it."""

    instance_id: str
    host: str
    pid: int
    kourier_version: str
    app_version: str | None
    live: bool


@dataclass(frozen=True)
class Registered:
    name: str
    instances: tuple[Instance, ...]
    live: bool


class Registry:
    """A fake service registry: shop has two instances, gone has none live."""

    async def services(self) -> Mapping[str, ServiceView]:
        return {
            "shop": Registered(
                "shop",
                (
                    Instance("a", "h1", 1, "0.1.0", "1.2.3", True),
                    Instance("b", "h2", 2, "0.1.0", "1.2.4", True),
                ),
                True,
            ),
            "gone": Registered("gone", (Instance("c", "h3", 3, "0.1.0", None, False),), False),
        }


async def test_docs_page_shows_instances_versions_and_health(stack: Stack) -> None:
    """With a registry the table shows instance counts, versions and health."""
    async with http(stack.gateway(catalog=Registry())) as client:
        page = (await client.get("/docs")).text
        services = (await client.get("/docs/services.json")).json()
    assert '<tr data-service="shop" class="live">' in page
    assert "<td>2</td><td>1.2.3, 1.2.4</td><td>0.1.0</td><td>live</td>" in page
    assert '<tr data-service="gone" class="down">' in page
    assert "no live instance" in page
    assert services[1]["name"] == "shop"
    assert [i["app_version"] for i in services[1]["instances"]] == ["1.2.3", "1.2.4"]


async def test_openapi_document_comes_over_kafka_with_the_gateway_as_server(
    stack: Stack,
) -> None:
    """The service's own OpenAPI document is served with servers pointing at the gateway."""
    gateway = stack.gateway(catalog=StaticCatalog(["shop"]))
    async with http(gateway) as client:
        document = (await client.get("/docs/shop/openapi.json")).json()
    assert document["info"]["title"] == "gateway test service"
    assert "/echo" in document["paths"]
    assert document["servers"][0]["url"] == "http://gw/shop"


async def test_docs_of_an_unknown_service_is_404(stack: Stack) -> None:
    """Asking for the documents of a service the catalog does not list is a 404 problem."""
    async with http(stack.gateway(catalog=StaticCatalog(["shop"]))) as client:
        response = await client.get("/docs/nosuch/openapi.json")
    assert response.status_code == 404


async def test_services_json_lists_instances(stack: Stack) -> None:
    """/docs/services.json gives each service with its health and instances."""
    async with http(stack.gateway(catalog=StaticCatalog(["shop"]))) as client:
        services = (await client.get("/docs/services.json")).json()
    assert services == [{"name": "shop", "live": True, "instances": []}]


async def test_asyncapi_export_validates_against_the_asyncapi_3_schema(stack: Stack) -> None:
    """The served AsyncAPI document of a FastAPI service is valid AsyncAPI 3.0."""
    async with http(stack.gateway(catalog=StaticCatalog(["shop"]))) as client:
        document = (await client.get("/docs/shop/asyncapi.json")).json()
    validate(document)
    assert document["channels"]["requests"]["address"] == stack.settings.request_topic("shop")
    assert document["channels"]["replies"]["address"] == stack.settings.reply_topic
    assert document["channels"]["deadLetters"]["address"] == stack.settings.dead_letter_topic(
        "shop"
    )
    echo = document["components"]["messages"]["echo_echo_post"]
    assert echo["headers"]["properties"]["kourier-method"] == {"type": "string", "const": "POST"}
    assert echo["payload"] == {"$ref": "#/components/schemas/Item"}
    assert "Item" in document["components"]["schemas"]


async def test_describe_fetches_the_openapi_document_over_kafka(stack: Stack) -> None:
    """describe_asyncapi (for `kourier services describe --asyncapi`) calls the service."""
    document = await describe_asyncapi(stack.client, "shop", stack.settings)
    validate(document)
    assert document["info"]["version"] == "1.2.3"


def test_a_service_without_openapi_still_has_a_valid_document() -> None:
    """With no OpenAPI document, the export describes any request and any reply."""
    document = asyncapi_document("plain", None)
    validate(document)
    assert set(document["components"]["messages"]) == {"request", "reply", "deadLetter"}


paths = st.dictionaries(
    st.from_regex(r"/[a-z{}/_]{0,20}", fullmatch=True),
    st.fixed_dictionaries(
        {},
        optional={
            method: st.fixed_dictionaries(
                {}, optional={"operationId": st.text(max_size=20), "summary": st.text(max_size=5)}
            )
            for method in ("get", "post", "delete")
        },
    ),
    max_size=4,
)


@settings(deadline=None)  # schema validation is slow on a loaded machine
@given(paths)
def test_any_set_of_operations_gives_a_valid_document(paths: dict[str, Any]) -> None:
    """Whatever the paths and operation ids, the export stays valid AsyncAPI 3.0."""
    validate(asyncapi_document("svc", {"openapi": "3.1.0", "paths": paths}))


def test_the_schema_is_the_packaged_one() -> None:
    """The schema comes from the AsyncAPI project's package, not a copy in this repo."""
    schema = asyncapi_schema()
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    assert not list(Path(ROOT / "tests").rglob("3.0.0.json"))


def test_the_validation_catches_a_broken_document() -> None:
    """The schema check is real: a wrong operation action is refused."""
    document = asyncapi_document("svc", None)
    document["operations"]["deadLetter"]["action"] = "publish"
    with pytest.raises(jsonschema.ValidationError):
        validate(document)
