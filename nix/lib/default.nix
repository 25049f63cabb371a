# The nixoci Nix library: OCI images as derivations, with builtins only (no
# nixpkgs at image build time; only the nixoci package).
#
#   nixociLib = import ./nix/lib { nixoci = <package or store path>; };
#   spec   = nixociLib.image { name = "hello"; roots = [ hello ];
#                              config.entrypoint = [ "${hello}/bin/hello" ]; };
#   layout = nixociLib.ociLayout { name = "hello"; tag = "example.org/hello:1.0";
#                                  images = { x86_64-linux = spec; aarch64-linux = specArm; }; };
#
# `image` is a cheap derivation whose output is a small JSON file, the image
# spec (version 2): roots, config, what goes outside the store (copyToRoot,
# dirs, symlinks, users, groups, includeNixDB), options; no tarballs. `nixoci build`
# images a spec's roots with its config, and so does `ociLayout`, a
# derivation whose output is the multi-platform OCI image layout itself,
# bit-identical to `nixoci build` for the same inputs, with
# `nix-support/hydra-build-products`.
#
# Both run nixoci as the derivation's builder (`nixoci write-spec`,
# `nixoci build --structured-attrs`), with `__structuredAttrs`; neither calls
# `nix`. README.md ("The Nix library") documents every argument.
{
  # The nixoci package, or a store path holding `bin/nixoci`.
  nixoci,
  # The system the builders run on (the nixoci binary's). Default: the
  # package's host platform, else `builtins.currentSystem` (impure
  # evaluation only).
  system ? null,
}:

let
  inherit (builtins)
    attrNames
    attrValues
    concatMap
    concatStringsSep
    elem
    filter
    genList
    hasContext
    isAttrs
    isInt
    isList
    isPath
    isString
    listToAttrs
    mapAttrs
    match
    replaceStrings
    stringLength
    substring
    typeOf
    ;

  hostSystem =
    if system != null then
      system
    else if isAttrs nixoci && nixoci ? stdenv.hostPlatform.system then
      nixoci.stdenv.hostPlatform.system
    else if isAttrs nixoci && nixoci ? system then
      nixoci.system
    else
      builtins.currentSystem;

  nixociBin = "${nixoci}/bin/nixoci";

  fail = where: msg: throw "nixoci: ${where}: ${msg}";

  # Quoted for error messages.
  show =
    v:
    if isString v then
      ''"${v}"''
    else if isPath v then
      toString v
    else if isAttrs v && v ? outPath then
      "derivation ${v.name or v.outPath}"
    else
      "a value of type ${typeOf v}";

  optionalAttrs = cond: as: if cond then as else { };

  # A store path name keeps [A-Za-z0-9+-._?=]; anything else, and a leading
  # dot, becomes `-` (`registry.io/app:1` -> `registry.io-app-1`).
  storeName =
    s:
    let
      ok = c: match "[A-Za-z0-9+._?=-]" c != null;
      chars = genList (i: substring i 1 s) (stringLength s);
      cleaned = concatStringsSep "" (map (c: if ok c then c else "-") chars);
      trimmed = if substring 0 1 cleaned == "." then "-" + substring 1 (-1) cleaned else cleaned;
    in
    if cleaned == "" then "image" else substring 0 180 trimmed;

  # A root or image: a derivation, a path (copied to the store), or a string
  # holding a store path with its string context. Returns the store path as a
  # string with context, so Nix records it as an input and a reference.
  storePathOf =
    where: v:
    let
      s =
        if isAttrs v && v ? outPath then
          "${v}"
        else if isPath v then
          "${v}"
        else if isString v then
          v
        else
          fail where "expected a derivation, a path or a store path string, found ${show v}";
      storeDir = builtins.storeDir;
      isStorePath = match storePathRegex s != null;
    in
    if !isStorePath then
      fail where "${show v} is not a store path (${storeDir}/HASH-NAME, no subpath)"
    else if !hasContext s then
      fail where "${show v} has no string context, so Nix would not make it an input: pass the derivation itself, or `builtins.storePath`"
    else
      s;

  # A list of strings: argv of the entrypoint or the command.
  argv =
    where: v:
    if v == null then
      null
    else if isList v then
      map (
        a:
        if isString a || isPath a || (isAttrs a && a ? outPath) then
          "${a}"
        else if isInt a || builtins.isFloat a then
          toString a
        else
          fail where "each element must be a string, found ${show a}"
      ) v
    else
      fail where "expected a list of strings (argv), found ${show v}";

  # A string value of env, labels or annotations.
  stringValue =
    where: v:
    if isString v || isPath v || (isAttrs v && v ? outPath) then
      "${v}"
    else if isInt v || builtins.isFloat v then
      toString v
    else
      fail where "expected a string, found ${show v}";

  # An attrset of strings; null values are left out.
  stringMap =
    where: v:
    if v == null then
      { }
    else if isAttrs v && !(v ? outPath) then
      mapAttrs (k: x: stringValue "${where}.${k}" x) (
        listToAttrs (
          map (k: {
            name = k;
            value = v.${k};
          }) (filter (k: v.${k} != null) (attrNames v))
        )
      )
    else
      fail where "expected an attribute set of strings, found ${show v}";

  # env: { KEY = "value"; } or, as in Docker's config, [ "KEY=value" ].
  envMap =
    where: v:
    if isList v then
      listToAttrs (
        map (
          kv:
          let
            m = if isString kv then match "([^=]+)=(.*)" kv else null;
          in
          if m == null then
            fail where "expected KEY=VALUE, found ${show kv}"
          else
            {
              name = builtins.elemAt m 0;
              value = builtins.elemAt m 1;
            }
        ) v
      )
    else
      stringMap where v;

  # exposedPorts: [ 8080 "53/udp" ] or, as in Docker, { "8080/tcp" = { }; }.
  portList =
    where: v:
    let
      ports =
        if v == null then
          [ ]
        else if isList v then
          v
        else if isAttrs v then
          attrNames v
        else
          fail where "expected a list of ports, found ${show v}";
    in
    map (
      p:
      if isInt p then
        "${toString p}/tcp"
      else if isString p && match "[0-9]+(/(tcp|udp|sctp))?" p != null then
        if match "[0-9]+" p != null then "${p}/tcp" else p
      else
        fail where "expected PORT, PORT/tcp, PORT/udp or PORT/sctp, found ${show p}"
    ) ports;

  optionalString =
    where: v:
    if v == null then
      null
    else if isString v || isPath v then
      "${v}"
    else if isInt v then
      toString v
    else
      fail where "expected a string or null, found ${show v}";

  # The image config: nixoci's camelCase names, or the OCI/Docker names
  # (Entrypoint, Cmd, Env, WorkingDir, User, ExposedPorts, Labels) that
  # dockerTools and nix2container users write.
  configKeys = {
    entrypoint = "Entrypoint";
    cmd = "Cmd";
    env = "Env";
    workingDir = "WorkingDir";
    user = "User";
    exposedPorts = "ExposedPorts";
    labels = "Labels";
    volumes = "Volumes";
    stopSignal = "StopSignal";
  };

  # An absolute path in the image, outside /nix.
  imagePath =
    where: p:
    if !isString p || match "(/[^/]+)+/?" p == null then
      fail where "expected an absolute path such as /var/lib/app, found ${show p}"
    else if match "/nix(/.*)?" p != null then
      fail where "${show p} is in /nix, which the store layers and the Nix database own"
    else if match ".*/\\.\\.?(/.*)?" p != null then
      fail where "${show p} holds a '.' or '..' part"
    else
      p;

  # A uid or gid: what a tar header holds.
  checkId =
    where: n:
    if isInt n && n >= 0 && n <= 2097151 then
      n
    else
      fail where "expected a number from 0 to 2097151, found ${show n}";

  # A user or group name.
  checkAccount =
    where: n:
    if isString n && match "[A-Za-z0-9._][A-Za-z0-9._-]{0,31}" n != null then
      n
    else
      fail where "expected a user or group name (letters, digits, '.', '_', '-'), found ${show n}";

  # Checks that an attrset has only `known` keys and every key of `required`.
  checkKeys =
    where: known: required: a:
    let
      unknown = filter (k: !elem k known) (attrNames a);
      missing = filter (k: !(a ? ${k})) required;
    in
    if !isAttrs a || a ? outPath then
      fail where "expected an attribute set { ${concatStringsSep "; " known}; }, found ${show a}"
    else if unknown != [ ] then
      fail where "unknown ${concatStringsSep ", " unknown} (known: ${concatStringsSep ", " known})"
    else if missing != [ ] then
      fail where "${concatStringsSep ", " missing} is missing"
    else
      a;

  # dirs: [ "/tmp" { path = "/tmp"; mode = "1777"; } { path; mode; uid; gid; } ].
  checkDir =
    where: d:
    let
      a = checkKeys where [ "path" "mode" "uid" "gid" ] [ "path" ] (if isString d then { path = d; } else d);
      w = k: "${where}.${k}";
      mode = a.mode or "0755";
    in
    {
      path = imagePath (w "path") a.path;
      mode =
        if isString mode && match "[0-7]{3,4}" mode != null then
          mode
        else
          fail (w "mode") "expected an octal mode as a string, such as \"0755\" or \"1777\", found ${show mode}";
      uid = checkId (w "uid") (a.uid or 0);
      gid = checkId (w "gid") (a.gid or 0);
    };

  # users: [ { name; uid; gid ? uid; home ? "/home/${name}"; shell ? "/bin/sh"; } ].
  checkUser =
    where: u:
    let
      a = checkKeys where [ "name" "uid" "gid" "home" "shell" ] [ "name" "uid" ] u;
      w = k: "${where}.${k}";
      uid = checkId (w "uid") a.uid;
      shell = a.shell or "/bin/sh";
    in
    {
      name = checkAccount (w "name") a.name;
      inherit uid;
      gid = checkId (w "gid") (a.gid or uid);
      home = imagePath (w "home") (a.home or "/home/${a.name}");
      shell =
        if isString shell && match "/.*" shell != null then
          shell
        else
          fail (w "shell") "expected an absolute path such as /bin/sh, found ${show shell}";
    };

  # groups: [ { name; gid; } ].
  # Each element of the list `xs` checked by `check`, named `WHERE.N`.
  checkList =
    where: check: xs:
    if isList xs then
      genList (i: check "${where}.${toString i}" (builtins.elemAt xs i)) (builtins.length xs)
    else
      fail where "expected a list, found ${show xs}";

  # perms: [ { regex; mode ? null; uid ? null; gid ? null; } ], as
  # --chmod REGEX=MODE and --chown REGEX=UID:GID.
  checkPerm =
    where: p:
    let
      a = checkKeys where [ "regex" "mode" "uid" "gid" ] [ "regex" ] p;
      w = k: "${where}.${k}";
      mode = a.mode or null;
      hasOwner = a ? uid || a ? gid;
    in
    if !isString a.regex || a.regex == "" then
      fail (w "regex") "expected a regular expression over absolute image paths, found ${show a.regex}"
    else if mode != null && !(isString mode && match "[0-7]{3,4}" mode != null) then
      fail (w "mode") "expected an octal mode as a string such as \"4755\", found ${show mode}"
    else if hasOwner && !(a ? uid && a ? gid) then
      fail where "give uid and gid together"
    else if mode == null && !hasOwner then
      fail where "give a mode, or uid and gid"
    else
      { inherit (a) regex; }
      // optionalAttrs (mode != null) { inherit mode; }
      // optionalAttrs hasOwner {
        uid = checkId (w "uid") a.uid;
        gid = checkId (w "gid") a.gid;
      };

  checkGroup =
    where: g:
    let
      a = checkKeys where [ "name" "gid" ] [ "name" "gid" ] g;
    in
    {
      name = checkAccount "${where}.name" a.name;
      gid = checkId "${where}.gid" a.gid;
    };

  # symlinks: { "/bin/sh" = "${busybox}/bin/sh"; }, targets absolute.
  checkSymlinks =
    where: ls:
    if !isAttrs ls || ls ? outPath then
      fail where "expected an attribute set of link = target, such as { \"/bin/sh\" = \"\${busybox}/bin/sh\"; }, found ${show ls}"
    else
      listToAttrs (
        map (
          k:
          let
            t = stringValue "${where}.${show k}" ls.${k};
          in
          {
            name = imagePath "${where}: link ${show k}" k;
            value =
              if match "/.*" t != null then
                t
              else
                fail "${where}.${show k}" "the target must be an absolute path, found ${show t}";
          }
        ) (attrNames ls)
      );

  # volumes: [ "/data" ] or, as in Docker, { "/data" = { }; }.
  volumeList =
    where: v:
    let
      vs =
        if v == null then
          [ ]
        else if isList v then
          v
        else if isAttrs v && !(v ? outPath) then
          attrNames v
        else
          fail where "expected a list of absolute paths, found ${show v}";
    in
    map (
      p:
      if isString p && match "/.*" p != null then
        p
      else
        fail where "expected an absolute path, found ${show p}"
    ) vs;

  # stopSignal: "SIGTERM", "SIGINT", … or a number.
  stopSignal =
    where: v:
    if v == null then
      null
    else if isInt v && v > 0 then
      toString v
    else if isString v && match "(SIG)?[A-Z][A-Z0-9+-]*|[0-9]+" v != null then
      v
    else
      fail where "expected a signal name such as SIGTERM or a number, found ${show v}";

  normalizeConfig =
    where: c:
    let
      known = attrNames configKeys ++ attrValues configKeys;
      unknown = filter (k: !elem k known) (attrNames c);
      both = filter (k: c ? ${k} && c ? ${configKeys.${k}}) (attrNames configKeys);
      get = k: c.${k} or (c.${configKeys.${k}} or null);
      w = k: "${where}.config.${k}";
    in
    if !isAttrs c then
      fail "${where}.config" "expected an attribute set, found ${show c}"
    else if unknown != [ ] then
      fail "${where}.config" "unknown ${concatStringsSep ", " unknown} (known: ${concatStringsSep ", " (attrNames configKeys)}, or their OCI names ${concatStringsSep ", " (attrValues configKeys)})"
    else if both != [ ] then
      fail "${where}.config" "${concatStringsSep ", " both} given twice (once under its OCI name)"
    else
      {
        entrypoint = argv (w "entrypoint") (get "entrypoint");
        cmd = argv (w "cmd") (get "cmd");
        env = envMap (w "env") (get "env");
        workingDir = optionalString (w "workingDir") (get "workingDir");
        user = optionalString (w "user") (get "user");
        exposedPorts = portList (w "exposedPorts") (get "exposedPorts");
        labels = stringMap (w "labels") (get "labels");
      }
      # Left out when not given, as in a version 1 spec.
      // optionalAttrs (get "volumes" != null) { volumes = volumeList (w "volumes") (get "volumes"); }
      // optionalAttrs (get "stopSignal" != null) { stopSignal = stopSignal (w "stopSignal") (get "stopSignal"); };

  checkMaxLayers =
    where: n:
    if isInt n && n >= 1 then n else fail where "maxLayers must be an integer of at least 1, found ${show n}";

  checkCreated =
    where: t:
    if t == null then
      null
    else if isString t && match "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})" t != null then
      t
    else
      fail where "created must be an RFC 3339 date-time (2024-01-01T00:00:00Z) or null, found ${show t}";

  checkTag =
    where: t:
    if isString t && t != "" then t else fail where "tag must be a non-empty string, found ${show t}";

  asList = v: if isList v then v else [ v ];

  # The store paths (with their string context) that a string mentions.
  storePathRegex = "${replaceStrings [ "." "+" ] [ "\\." "\\+" ] builtins.storeDir}/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+._?=-]+";
  storePathsIn =
    s:
    let
      step =
        acc: part:
        if isList part then
          let
            n = stringLength (builtins.head part);
          in
          {
            off = acc.off + n;
            # substring keeps the context of the whole string.
            found = acc.found ++ [ (substring acc.off n s) ];
          }
        else
          acc // { off = acc.off + stringLength part; };
    in
    if hasContext s then (builtins.foldl' step { off = 0; found = [ ]; } (builtins.split "(${storePathRegex})" s)).found else [ ];

  # Keeps the first of equal strings, in order.
  unique = builtins.foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];

  # Store paths the runtime config mentions: the entrypoint must be in the
  # image even when only the config names it.
  configPaths =
    c:
    concatMap storePathsIn (
      (if c.entrypoint == null then [ ] else c.entrypoint)
      ++ (if c.cmd == null then [ ] else c.cmd)
      ++ attrValues c.env
      ++ (if c.workingDir == null then [ ] else [ c.workingDir ])
    );

  # The image spec (version 2) of `image`'s arguments, as nixoci reads it.
  mkSpec =
    {
      name,
      tag ? null,
      roots ? [ ],
      contents ? null,
      copyToRoot ? [ ],
      dirs ? [ ],
      symlinks ? { },
      users ? [ ],
      groups ? [ ],
      perms ? [ ],
      includeNixDB ? false,
      config ? { },
      maxLayers ? 100,
      annotations ? { },
      created ? null,
      fromImage ? null,
      ...
    }:
    let
      where = "image ${show name}";
      config' = normalizeConfig where config;
      copies = map (storePathOf "${where}: copyToRoot") (asList copyToRoot);
      dirs' = checkList "${where}: dirs" checkDir dirs;
      users' = checkList "${where}: users" checkUser users;
      groups' = checkList "${where}: groups" checkGroup groups;
      symlinks' = checkSymlinks "${where}: symlinks" symlinks;
      perms' = checkList "${where}: perms" checkPerm perms;
    in
    if !isString name || name == "" then
      fail "image" "name must be a non-empty string, found ${show name}"
    else if contents != null then
      fail "${where}: contents" "nixoci has no `contents`: dockerTools links `contents` into /, nixoci does not guess. Give the store paths to put in the image's store as `roots = [ … ];`, and those whose trees (bin/, etc/, …) belong at / as `copyToRoot = [ … ];` (they are in the image's store too)"
    else if !builtins.isBool includeNixDB then
      fail "${where}: includeNixDB" "expected true or false, found ${show includeNixDB}"
    else if asList roots == [ ] && copies == [ ] then
      fail where "roots is empty: give the store paths to put in the image"
    else
      {
        nixociImageSpec = 2;
        inherit name;
        tag = if tag == null then null else checkTag where tag;
        roots = unique (
          map (storePathOf "${where}: roots") (asList roots)
          ++ copies
          ++ configPaths config'
          ++ concatMap storePathsIn (attrValues symlinks')
        );
        config = config';
        maxLayers = checkMaxLayers where maxLayers;
        annotations = stringMap "${where}.annotations" annotations;
        created = checkCreated where created;
      }
      # Left out when not given, as in a version 1 spec.
      // optionalAttrs (copies != [ ]) { copyToRoot = copies; }
      // optionalAttrs (dirs' != [ ]) { dirs = dirs'; }
      // optionalAttrs (symlinks' != { }) { symlinks = symlinks'; }
      // optionalAttrs (users' != [ ]) { users = users'; }
      // optionalAttrs (groups' != [ ]) { groups = groups'; }
      // optionalAttrs (perms' != [ ]) { perms = perms'; }
      // optionalAttrs includeNixDB { includeNixDB = true; }
      // optionalAttrs (fromImage != null) { fromImage = storePathOf "${where}: fromImage" fromImage; };

  image =
    args@{
      name,
      tag ? null,
      roots ? [ ],
      contents ? null,
      copyToRoot ? [ ],
      dirs ? [ ],
      symlinks ? { },
      users ? [ ],
      groups ? [ ],
      perms ? [ ],
      includeNixDB ? false,
      config ? { },
      maxLayers ? 100,
      annotations ? { },
      created ? null,
      # A base image: a one-platform layout such as `pullImage` makes.
      fromImage ? null,
      system ? hostSystem,
    }:
    let
      spec = mkSpec args;
    in
    derivation {
      name = "${storeName name}-spec.json";
      inherit system spec;
      builder = nixociBin;
      args = [ "write-spec" ];
      __structuredAttrs = true;
      # A few hundred bytes of JSON: not worth a remote builder or a cache.
      preferLocalBuild = true;
      allowSubstitutes = false;
    };

  ociLayout =
    {
      name,
      tag ? null,
      images,
      maxLayers ? null,
      annotations ? { },
      created ? null,
      compression ? null,
      level ? null,
      layers ? [ ],
      minLayerSize ? null,
      reserveLayers ? null,
      # Refuse an image holding ELF programs or libraries of another
      # architecture than its platform's (as `nixoci build` does without
      # --no-arch-check).
      archCheck ? true,
      system ? hostSystem,
    }:
    let
      where = "ociLayout ${show name}";
      layerGroups =
        if isList layers then
          genList (
            i:
            let
              g = asList (builtins.elemAt layers i);
            in
            if g == [ ] then
              fail "${where}: layers.${toString i}" "an empty group"
            else
              map (storePathOf "${where}: layers.${toString i}") g
          ) (builtins.length layers)
        else
          fail "${where}: layers" "expected a list of lists of store paths (each list one layer), found ${show layers}";
      paths = mapAttrs (
        platform: v:
        if match "[a-z0-9_]+-[a-z0-9]+|[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?" platform == null then
          fail where "images.${platform}: not a Nix system (x86_64-linux) or an OCI platform (linux/arm64, linux/arm/v7)"
        else
          storePathOf "${where}: images.${platform}" v
      ) images;
    in
    if !isString name || name == "" then
      fail "ociLayout" "name must be a non-empty string, found ${show name}"
    else if !isAttrs images || images ? outPath then
      fail where "images must be an attribute set of platform = image, such as { x86_64-linux = …; aarch64-linux = …; }, found ${show images}"
    else if images == { } then
      fail where "images is empty: give at least one platform = image"
    else
      derivation (
        {
          name = storeName name;
          inherit system;
          builder = nixociBin;
          args = [
            "build"
            "--structured-attrs"
          ];
          __structuredAttrs = true;
          images = paths;
          annotations = stringMap "${where}.annotations" annotations;
          # Nix puts the closure of every image (path, narHash, narSize,
          # references) under the `closure` key of the structured attrs.
          exportReferencesGraph.closure = attrValues paths;
        }
        # Left out when null: nixoci then takes them from the image specs,
        # as `nixoci build` does without --tag, --max-layers or --created.
        // optionalAttrs (tag != null) { tag = checkTag where tag; }
        // optionalAttrs (maxLayers != null) { maxLayers = checkMaxLayers where maxLayers; }
        // optionalAttrs (created != null) { created = checkCreated where created; }
        // optionalAttrs (compression != null) {
          compression =
            if elem compression [ "gzip" "zstd" "none" ] then
              compression
            else
              fail "${where}: compression" "expected \"gzip\", \"zstd\" or \"none\", found ${show compression}";
        }
        // optionalAttrs (level != null) {
          level = if isInt level then level else fail "${where}: level" "expected an integer, found ${show level}";
        }
        // optionalAttrs (layerGroups != [ ]) { layers = layerGroups; }
        // optionalAttrs (minLayerSize != null) {
          minLayerSize =
            if (isInt minLayerSize && minLayerSize >= 0) || (isString minLayerSize && match "[0-9]+([KkMmGg]([Ii]?[Bb])?|[Bb])?" minLayerSize != null) then
              minLayerSize
            else
              fail "${where}: minLayerSize" "expected bytes, or a number with K, M or G (powers of 1024) such as \"64K\", found ${show minLayerSize}";
        }
        // optionalAttrs (archCheck != true) {
          archCheck =
            if archCheck == false then
              false
            else
              fail "${where}: archCheck" "expected true or false, found ${show archCheck}";
        }
        // optionalAttrs (reserveLayers != null) {
          reserveLayers =
            if isInt reserveLayers && reserveLayers >= 0 then
              reserveLayers
            else
              fail "${where}: reserveLayers" "expected a non-negative integer, found ${show reserveLayers}";
        }
      );
  # The OCI architecture of a Nix system, for pullImage's default.
  ociArch =
    sys:
    let
      table = {
        x86_64-linux = "amd64";
        aarch64-linux = "arm64";
        armv7l-linux = "arm";
        armv6l-linux = "arm";
        i686-linux = "386";
        riscv64-linux = "riscv64";
        powerpc64le-linux = "ppc64le";
        s390x-linux = "s390x";
      };
    in
    table.${sys} or (fail "pullImage" "no OCI architecture for the system ${show sys}: give arch");

  # One platform of a registry image as an OCI layout: a fixed-output
  # derivation running `nixoci pull`, whose output is the same bytes on
  # every machine (so `hash` is stable), for `image { fromImage = …; }`.
  pullImage =
    {
      imageName,
      imageDigest,
      hash ? "",
      os ? "linux",
      arch ? ociArch hostSystem,
      variant ? null,
      # A PEM file of the certificates to trust (a registry over HTTPS:
      # the builder has no system certificates), e.g.
      # "${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt".
      caFile ? null,
      # Plain HTTP or unverified TLS to a registry that is not on this
      # machine.
      tlsVerify ? true,
      name ? null,
      system ? hostSystem,
    }:
    let
      where = "pullImage ${show imageName}";
      platform = "${os}/${arch}" + (if variant == null then "" else "/${variant}");
    in
    if !isString imageName || match "[^/@ ]+/[^@ ]+" imageName == null then
      fail where "imageName must be REGISTRY/NAME (registry.example.org/base, docker.io/library/alpine), found ${show imageName}"
    else if !isString imageDigest || match "sha256:[0-9a-f]{64}" imageDigest == null then
      fail where "imageDigest must be sha256: and 64 hex digits, found ${show imageDigest}"
    else if !isString hash then
      fail where "hash must be a string (an SRI hash such as \"sha256-…\", or \"\" to be told it), found ${show hash}"
    else
      derivation (
        {
          name = if name != null then storeName name else storeName "${baseNameOf imageName}-${arch}-oci";
          inherit system;
          builder = nixociBin;
          args =
            [
              "pull"
              "docker://${imageName}@${imageDigest}"
              "--platform"
              platform
              "-o"
              (builtins.placeholder "out")
            ]
            ++ (if caFile == null then [ ] else [ "--ca-file" "${caFile}" ])
            ++ (if tlsVerify then [ ] else [ "--insecure" ]);
          outputHashMode = "recursive";
          outputHashAlgo = "sha256";
          outputHash = hash;
          # Credentials for a private registry, from the Nix daemon's
          # environment when it passes them on.
          impureEnvVars = [
            "NIXOCI_REGISTRY_USER"
            "NIXOCI_REGISTRY_PASSWORD"
          ];
          preferLocalBuild = true;
        }
      );
in
{
  inherit image ociLayout pullImage;
  # The spec `image` would write for these arguments, for inspection and
  # tests (`nixociLib.imageSpec { … }`); no derivation is built.
  imageSpec = mkSpec;
}
