{
  lib,
  buildPythonPackage,
  fetchPypi,
  anyio,
  httpx2,
  jsonschema,
  mcp-types,
  opentelemetry-api,
  pydantic,
  pyjwt,
  python-multipart,
  sse-starlette,
  starlette,
  typing-extensions,
  typing-inspection,
  uvicorn,
}:

buildPythonPackage rec {
  pname = "mcp";
  version = "2.3.0";
  format = "wheel";

  src = fetchPypi {
    inherit pname version format;
    dist = "py3";
    python = "py3";
    hash = "sha256-3QxEwInRZFPorjGjh3oAVNeiMUyqqB9eBUG5sXNLI3c=";
  };

  dependencies = [
    anyio
    httpx2
    jsonschema
    mcp-types
    opentelemetry-api
    pydantic
    python-multipart
    sse-starlette
    starlette
    typing-extensions
    typing-inspection
    uvicorn
  ]
  ++ pyjwt.optional-dependencies.crypto;

  # A wheel: its lower bounds (pydantic, starlette, sse-starlette, ...) can
  # trail nixpkgs by a minor release; the import checks below must pass.
  dontCheckRuntimeDeps = true;
  pythonImportsCheck = [
    "mcp"
    "mcp.server"
  ];

  meta = {
    description = "Model Context Protocol SDK (2.x: mcp.server.MCPServer)";
    homepage = "https://github.com/modelcontextprotocol/python-sdk";
    license = lib.licenses.mit;
  };
}
