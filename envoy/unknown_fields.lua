-- The edge's unknown-field check (docs/platform.md, "Unknown fields are refused"). A JSON body key or a query
-- parameter that the request message does not define is refused with 400 UNKNOWN_FIELD before
-- the transcoder, which would drop it silently. A body that is not strict JSON (RFC 8259) is
-- refused here with 400 BAD_REQUEST: the transcoder's own parser takes unquoted keys, single
-- quotes, trailing commas and unknown escapes, so a body this walker cannot read is a body it
-- could not check.
--
-- stack/envoy_config.py renders this file into the Envoy config after NAMESPACE (the dynamic
-- metadata in which a refusal names the field, for the UNKNOWN_FIELD local reply) and the tables
-- that stack/known_fields.py derives from the descriptor set:
--   NODES     one table per message (or message without its path-bound fields): JSON key ->
--             lead, where a lead is 0 (a value, not walked), n (node n: its keys are checked;
--             in an array, each element's) or -n (a map: any key, each value checked as node n);
--   BINDINGS  per HTTP method, `exact` (literal paths) and `patterns` (anchored, in the order
--             in which the transcoder prefers them); each binding with its body root (a lead;
--             absent when the body is not JSON) and its query parameter names.
--
-- Cheap on purpose: a request with neither a body nor a query string returns at once; strings
-- are scanned byte by byte (LuaJIT compiles such loops, not pattern searches); a valid body's
-- keys are equal to strings already in the tables, which Lua interns, so they are found rather
-- than built: beyond what Envoy hands over (the path, the body), only a refusal allocates.

local byte, sub, find, gsub, char, format = string.byte, string.sub, string.find, string.gsub,
  string.char, string.format
local concat, floor, tonumber = table.concat, math.floor, tonumber

local MAX_DEPTH = 32 -- nesting of objects and arrays; no request message comes close
local MAX_REPORTED_BYTES = 200 -- of a name quoted back to the client

-- Leads become the tables they name, once per Lua state (one per worker thread).
local MAPS = {}
local function resolve(lead)
  if lead == 0 then
    return false
  elseif lead > 0 then
    return NODES[lead]
  end
  local map = MAPS[-lead]
  if map == nil then
    map = {[1] = NODES[-lead]} -- [1]: a numeric key never collides with a JSON key (a string)
    MAPS[-lead] = map
  end
  return map
end
for _, node in ipairs(NODES) do
  for key, lead in pairs(node) do
    node[key] = resolve(lead)
  end
end
for _, by_method in pairs(BINDINGS) do
  for _, binding in pairs(by_method.exact) do
    if binding.body ~= nil then binding.body = resolve(binding.body) end
  end
  for _, binding in ipairs(by_method.patterns) do
    if binding.body ~= nil then binding.body = resolve(binding.body) end
  end
end

-- --- failures ------------------------------------------------------------------------------------

-- The walk stops with error(FAILED); what went wrong is in these two (no table per failure).
local FAILED = {}
local failed_field, failed_message
-- The key (string) or index (number) at each depth of the walk, for the path of an unknown key.
local PATH = {}

local function malformed(what, at)
  failed_field = nil
  failed_message = "invalid JSON: " .. what .. " at byte " .. at
  error(FAILED, 0)
end

-- Second-byte ranges of UTF-8 sequences (RFC 3629), so a name quoted back is valid UTF-8.
local function sequence_length(text, i)
  local c = byte(text, i)
  if c < 0x80 then return 1 end
  local size, low, high = 0, 0x80, 0xBF
  if c >= 0xC2 and c <= 0xDF then size = 2
  elseif c >= 0xE0 and c <= 0xEF then
    size = 3
    if c == 0xE0 then low = 0xA0 elseif c == 0xED then high = 0x9F end
  elseif c >= 0xF0 and c <= 0xF4 then
    size = 4
    if c == 0xF0 then low = 0x90 elseif c == 0xF4 then high = 0x8F end
  else
    return 0
  end
  for k = 1, size - 1 do
    local b = byte(text, i + k)
    if b == nil or b < (k == 1 and low or 0x80) or b > (k == 1 and high or 0xBF) then return 0 end
  end
  return size
end

-- The name as the client wrote it, cut to MAX_REPORTED_BYTES; a control character as the JSON
-- escape that wrote it (Envoy would cut the text at a NUL), invalid UTF-8 bytes as U+FFFD.
local function reportable(text)
  local out, n, i, used = {}, 0, 1, 0
  while i <= #text do
    if used >= MAX_REPORTED_BYTES then
      out[n + 1] = "..."
      break
    end
    local size, c = sequence_length(text, i), byte(text, i)
    n = n + 1
    if c < 0x20 or c == 0x7F then
      out[n] = format("\\u%04x", c)
      i = i + 1
    elseif size == 0 then
      out[n] = "\239\191\189"
      i = i + 1
    else
      out[n] = sub(text, i, i + size - 1)
      i = i + size
    end
    used = used + #out[n]
  end
  return concat(out)
end

local function unknown_key(key, depth)
  local parts = {}
  for d = 1, depth - 1 do
    local step = PATH[d]
    parts[d] = type(step) == "number" and "[" .. step .. "]" or (d > 1 and "." or "") .. step
  end
  local parent = concat(parts)
  failed_field = reportable(parent == "" and key or parent .. "." .. key)
  failed_message = 'Unknown name "' .. reportable(key) .. '"'
    .. (parent == "" and "" or " at '" .. reportable(parent) .. "'")
    .. ": the request has no such field"
  error(FAILED, 0)
end

local function unknown_parameter(name)
  failed_field = reportable(name)
  failed_message = 'Unknown name "' .. failed_field .. '": the request has no such query parameter'
  error(FAILED, 0)
end

-- --- the JSON walk -------------------------------------------------------------------------------

local function skip_space(s, i)
  local c = byte(s, i)
  while c == 32 or c == 10 or c == 13 or c == 9 do
    i = i + 1
    c = byte(s, i)
  end
  return i, c
end

-- Strings are scanned byte by byte: LuaJIT compiles such loops, not pattern searches.
local SHORT_ESCAPES = {[34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f",
                       [110] = "\n", [114] = "\r", [116] = "\t"}
local LITERALS = {[116] = "true", [102] = "false", [110] = "null"}

local function utf8(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + floor(cp / 0x40), 0x80 + cp % 0x40) end
  if cp < 0x10000 then
    return char(0xE0 + floor(cp / 0x1000), 0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end
  return char(0xF0 + floor(cp / 0x40000), 0x80 + floor(cp / 0x1000) % 0x40,
              0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

-- The index of the first byte from j on that ends a run of plain string bytes: a quote, a
-- backslash, a control character (not allowed unescaped) or the end (a nil byte).
local function plain_run(s, j)
  local c = byte(s, j)
  while c ~= nil and (c > 34 and c ~= 92 or c == 32 or c == 33) do
    j = j + 1
    c = byte(s, j)
  end
  return j, c
end

local function is_hex(h)
  return h ~= nil and (h >= 48 and h <= 57 or h >= 65 and h <= 70 or h >= 97 and h <= 102)
end

-- The four hex digits of a \u escape at s[at]; the backslash is at s[at - 2].
local function hex4(s, at)
  if not (is_hex(byte(s, at)) and is_hex(byte(s, at + 1)) and is_hex(byte(s, at + 2))
          and is_hex(byte(s, at + 3))) then
    malformed("invalid \\u escape", at - 2)
  end
  return tonumber(sub(s, at, at + 3), 16)
end

-- The escape at s[j] (the backslash) in a string value: checked; returns the index after it.
local function skip_escape(s, j)
  local e = byte(s, j + 1)
  if e == 117 then
    hex4(s, j + 2)
    return j + 6
  end
  if SHORT_ESCAPES[e] == nil then malformed("invalid escape", j) end
  return j + 2
end

-- `\uXXXX` at s[j] (the backslash), with a surrogate pair as one code point: returns it as UTF-8
-- and the index after it.
local function unicode_escape(s, j)
  local cp = hex4(s, j + 2)
  if cp >= 0xD800 and cp <= 0xDBFF then
    if sub(s, j + 6, j + 7) ~= "\\u" then malformed("unpaired surrogate", j) end
    local low = hex4(s, j + 8)
    if low < 0xDC00 or low > 0xDFFF then malformed("unpaired surrogate", j) end
    return utf8(0x10000 + (cp - 0xD800) * 0x400 + (low - 0xDC00)), j + 12
  elseif cp >= 0xDC00 and cp <= 0xDFFF then
    malformed("unpaired surrogate", j)
  end
  return utf8(cp), j + 6
end

-- A string value at s[i] (the opening quote): checked, not decoded. Returns the index after it.
local function skip_string(s, i)
  local j, c = plain_run(s, i + 1)
  while c ~= 34 do
    if c == 92 then
      j, c = plain_run(s, skip_escape(s, j))
    elseif c == nil then
      malformed("unterminated string", i)
    else
      malformed("control character in a string", j)
    end
  end
  return j + 1
end

-- A key at s[i] (the opening quote), decoded: "it\u0065mz" is the key itemz. Returns the key and
-- the index after it.
local function read_key(s, i)
  local j, c = plain_run(s, i + 1)
  if c == 34 then return sub(s, i + 1, j - 1), j + 1 end
  local parts, n, start = {}, 0, i + 1
  while true do
    n = n + 1
    parts[n] = sub(s, start, j - 1)
    if c == 34 then return concat(parts, "", 1, n), j + 1 end
    if c == nil then malformed("unterminated string", i) end
    if c ~= 92 then malformed("control character in a string", j) end
    local decoded
    if byte(s, j + 1) == 117 then
      decoded, j = unicode_escape(s, j)
    else
      decoded = SHORT_ESCAPES[byte(s, j + 1)]
      if decoded == nil then malformed("invalid escape", j) end
      j = j + 2
    end
    n = n + 1
    parts[n] = decoded
    start = j
    j, c = plain_run(s, j)
  end
end

local function skip_digits(s, i)
  local c = byte(s, i)
  if c == nil or c < 48 or c > 57 then return nil end
  repeat
    i = i + 1
    c = byte(s, i)
  until c == nil or c < 48 or c > 57
  return i, c
end

local function skip_number(s, i, c)
  local start = i
  if c == 45 then
    i = i + 1
    c = byte(s, i)
  end
  if c == 48 then
    i = i + 1
    c = byte(s, i)
  else
    i, c = skip_digits(s, i)
    if i == nil then malformed("invalid value", start) end
  end
  if c == 46 then
    i, c = skip_digits(s, i + 1)
    if i == nil then malformed("invalid number", start) end
  end
  if c == 101 or c == 69 then
    i = i + 1
    c = byte(s, i)
    if c == 43 or c == 45 then i = i + 1 end
    i, c = skip_digits(s, i)
    if i == nil then malformed("invalid number", start) end
  end
  return i
end

local walk_value

-- An object at s[i]: with `node` a message, each key must be one of its keys; with `node` a map,
-- any key, each value walked as the map's value node; with `node` false, nothing is checked.
local function walk_object(s, i, node, depth)
  if depth >= MAX_DEPTH then malformed("nested deeper than " .. MAX_DEPTH .. " levels", i) end
  depth = depth + 1
  local map_values = node and node[1]
  local c
  i, c = skip_space(s, i + 1)
  if c == 125 then return i + 1 end
  while true do
    if c ~= 34 then malformed("expected a string key", i) end
    local key, lead
    key, i = read_key(s, i)
    if not node then
      lead = false
    elseif map_values then
      lead = map_values
    else
      lead = node[key]
      if lead == nil then unknown_key(key, depth) end
    end
    i, c = skip_space(s, i)
    if c ~= 58 then malformed("expected ':'", i) end
    i, c = skip_space(s, i + 1)
    PATH[depth] = key
    i = walk_value(s, i, c, lead, depth)
    i, c = skip_space(s, i)
    if c == 125 then return i + 1 end
    if c ~= 44 then malformed("expected ',' or '}'", i) end
    i, c = skip_space(s, i + 1)
  end
end

-- An array at s[i]: each element is walked as `node` (a repeated field's elements).
local function walk_array(s, i, node, depth)
  if depth >= MAX_DEPTH then malformed("nested deeper than " .. MAX_DEPTH .. " levels", i) end
  depth = depth + 1
  local c
  i, c = skip_space(s, i + 1)
  if c == 93 then return i + 1 end
  local index = 0
  while true do
    PATH[depth] = index
    i = walk_value(s, i, c, node, depth)
    i, c = skip_space(s, i)
    if c == 93 then return i + 1 end
    if c ~= 44 then malformed("expected ',' or ']'", i) end
    index = index + 1
    i, c = skip_space(s, i + 1)
  end
end

-- The value at s[i], whose first byte is c; returns the index after it.
walk_value = function(s, i, c, node, depth)
  if c == 123 then return walk_object(s, i, node, depth) end
  if c == 91 then return walk_array(s, i, node, depth) end
  if c == 34 then return skip_string(s, i) end
  local word = LITERALS[c]
  if word ~= nil then
    if sub(s, i, i + #word - 1) ~= word then malformed("invalid value", i) end
    return i + #word
  end
  if c == nil then malformed("unexpected end", i) end
  if c == 45 or (c >= 48 and c <= 57) then return skip_number(s, i, c) end
  malformed("invalid value", i)
end

local function walk_body(s, root)
  local i, c = skip_space(s, 1)
  i = walk_value(s, i, c, root, 0)
  i, c = skip_space(s, i)
  if c ~= nil then malformed("unexpected data after the JSON value", i) end
end

-- --- query parameters ----------------------------------------------------------------------------

local function percent_byte(hex)
  return char(tonumber(hex, 16))
end

-- Each parameter name, percent-decoded as the transcoder does (`+` stays `+`), must be known.
local function check_query(path, from, known)
  local last = #path
  local i = from
  while i <= last do
    local stop = find(path, "&", i, true) or last + 1
    local equals = find(path, "=", i, true)
    local name_end = (equals ~= nil and equals < stop) and equals - 1 or stop - 1
    if name_end >= i then
      local name = sub(path, i, name_end)
      if find(name, "%", 1, true) then name = gsub(name, "%%(%x%x)", percent_byte) end
      if not known[name] then unknown_parameter(name) end
    end
    i = stop + 1
  end
end

-- --- the filter ----------------------------------------------------------------------------------

local function binding_for(method, route)
  local by_method = BINDINGS[method]
  if by_method == nil then return nil end
  local binding = by_method.exact[route]
  if binding ~= nil then return binding end
  local patterns = by_method.patterns
  for k = 1, #patterns do
    if find(route, patterns[k].pattern) then return patterns[k] end
  end
  return nil
end

-- Returns when the request may pass; raises FAILED when it is refused.
local function inspect(method, path, mark, body)
  -- No binding: the transcoder answers 404 (reject_unknown_method) and reads nothing.
  local binding = binding_for(method, mark and sub(path, 1, mark - 1) or path)
  if binding == nil then return end
  if mark ~= nil then check_query(path, mark + 1, binding.query) end
  if body ~= nil and binding.body ~= nil then
    local size = body:length()
    if size > 0 then walk_body(body:getBytes(0, size), binding.body) end
  end
end

function envoy_on_request(handle)
  -- Headers first: the objects Envoy hands out are not valid after body() has waited.
  local headers = handle:headers()
  local method, path = headers:get(":method"), headers:get(":path")
  local mark = find(path, "?", 1, true)
  local body = handle:body()
  if body == nil and mark == nil then return end
  local ok, err = pcall(inspect, method, path, mark, body)
  if ok then return end
  if err ~= FAILED then
    -- A fault of this script. Envoy would let the request through unchecked: refuse it.
    handle:logErr("unknown-field check: " .. tostring(err))
    failed_field, failed_message = nil, "the request could not be checked"
  end
  if failed_field ~= nil then
    local metadata = handle:streamInfo():dynamicMetadata()
    metadata:set(NAMESPACE, "field", failed_field)
    metadata:set(NAMESPACE, "message", failed_message)
  end
  handle:respond({[":status"] = "400"}, failed_message)
end
