//! The layout's unit tests: files, presets, placement and canonical text.

use super::*;
use crate::gpt;
use proptest::prelude::*;
use std::path::Path;

const FILE: &str = "/cfg/layout.toml";

fn parse(text: &str) -> Result<LayoutSpec, SpecError> {
    LayoutSpec::from_toml(text, Path::new(FILE), Path::new("/cfg"), None)
}

/// The error of `text`, which must name the file and `field`.
fn field_error(text: &str, field: &str) -> Problem {
    match parse(text) {
        Err(e @ SpecError::Field { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("{FILE}: {field}: ")), "{msg}");
            let SpecError::Field { problem, .. } = e else {
                unreachable!()
            };
            problem
        }
        other => panic!("expected an error in {field}, got {other:?}"),
    }
}

fn toml_error(text: &str) -> String {
    match parse(text) {
        Err(e @ SpecError::Toml { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with(FILE), "{msg}");
            msg
        }
        other => panic!("expected a TOML error, got {other:?}"),
    }
}

fn lbas(spec: &LayoutSpec) -> Vec<(u64, u64)> {
    spec.place()
        .unwrap()
        .iter()
        .map(|p| (p.first_lba, p.last_lba))
        .collect()
}

#[test]
fn monogon_preset_matches_the_installer() {
    let spec = LayoutSpec::monogon(&MonogonPreset::default());
    spec.validate("monogon preset").unwrap();
    assert_eq!(spec.disk_size, 5 * GIB);
    assert_eq!(
        lbas(&spec),
        [
            (2048, 264191),
            (264192, 2361343),
            (2361344, 4458495),
            (4458496, 10483711)
        ]
    );
    let names: Vec<&str> = spec.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ESP",
            "METROPOLIS-SYSTEM-A",
            "METROPOLIS-SYSTEM-B",
            "METROPOLIS-NODE-DATA"
        ]
    );
    assert_eq!(
        spec.partitions[0].type_guid.to_string(),
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    );
    assert_eq!(
        spec.partitions[1].type_guid.to_string(),
        "ee96054b-f6d0-4267-aaaa-724b2afea74c"
    );
    assert_eq!(
        spec.partitions[2].type_guid.to_string(),
        "ee96054b-f6d0-4267-bbbb-724b2afea74c"
    );
    assert_eq!(
        spec.partitions[3].type_guid.to_string(),
        "9eeec464-6885-414a-b278-4305c51f7966"
    );
    assert_eq!(
        spec.partitions[1].content,
        ContentSpec::Payload("system".into())
    );
    assert_eq!(spec.partitions[2].content, ContentSpec::Empty);
    let ContentSpec::Fat32 { label, files } = &spec.partitions[0].content else {
        panic!("the ESP is FAT32");
    };
    assert_eq!(label, "MNGN_BOOT");
    let kernel = ContentSpec::Payload("kernel.efi".into());
    assert_eq!(
        files,
        &[
            ("EFI/metropolis/boot-a.efi".to_owned(), kernel.clone()),
            ("EFI/BOOT/BOOTx64.EFI".to_owned(), kernel),
        ]
    );

    let with_loader = LayoutSpec::monogon(&MonogonPreset {
        abloader: Some("/x/loader.efi".into()),
        efi_boot_file: "BOOTAA64.EFI".into(),
        ..MonogonPreset::default()
    });
    let ContentSpec::Fat32 { files, .. } = &with_loader.partitions[0].content else {
        panic!("the ESP is FAT32");
    };
    assert_eq!(
        files[1],
        (
            "EFI/BOOT/BOOTAA64.EFI".to_owned(),
            ContentSpec::File("/x/loader.efi".into())
        )
    );
    assert_ne!(spec.layout_hash(), with_loader.layout_hash());
}

#[test]
fn production_sizes_from_a_layout_file() {
    let spec = parse(
        r#"
        disk_size = "16GiB"
        [[partitions]]
        name = "ESP"
        type = "ESP"
        size = "384MiB"
        [partitions.fat32]
        label = "MNGN_BOOT"
        files = [
          { path = "EFI/metropolis/boot-a.efi", content = "payload:kernel.efi" },
          { path = "EFI/BOOT/BOOTx64.EFI", content = "file:loader.efi" },
        ]
        [[partitions]]
        name = "METROPOLIS-SYSTEM-A"
        type = "metropolis-system-a"
        size = "4GiB"
        content = "payload:system"
        [[partitions]]
        name = "METROPOLIS-SYSTEM-B"
        type = "ee96054b-f6d0-4267-bbbb-724b2afea74c"
        size = "4 G"
        content = "empty"
        [[partitions]]
        name = "METROPOLIS-NODE-DATA"
        type = "metropolis-data"
        size = "rest"
        "#,
    )
    .unwrap();
    let n = 16 * GIB / 512;
    let data_start = 2048 + 786432 + 2 * 8388608;
    let data_blocks = (n - 33 - data_start) / 2048 * 2048;
    assert_eq!(
        lbas(&spec),
        [
            (2048, 788479),
            (788480, 9177087),
            (9177088, 17565695),
            (data_start, data_start + data_blocks - 1)
        ]
    );
    let ContentSpec::Fat32 { files, .. } = &spec.partitions[0].content else {
        panic!("FAT32");
    };
    // file: paths are relative to the layout file.
    assert_eq!(files[1].1, ContentSpec::File("/cfg/loader.efi".into()));
    assert_eq!(spec.partitions[3].content, ContentSpec::Empty);
    assert_eq!(spec.partitions[2].type_guid, METROPOLIS_SYSTEM_B_TYPE);
}

#[test]
fn disk_size_given_outside_overrides_the_file() {
    let text =
        "disk_size = 1048576000\n[[partitions]]\nname = \"a\"\ntype = \"linux\"\nsize = \"rest\"\n";
    assert_eq!(parse(text).unwrap().disk_size, 1048576000);
    let spec =
        LayoutSpec::from_toml(text, Path::new(FILE), Path::new("/"), Some(64 * MIB)).unwrap();
    assert_eq!(spec.disk_size, 64 * MIB);
    assert_eq!(lbas(&spec), [(2048, 2048 + 62 * 2048 - 1)]);
    let no_size = "[[partitions]]\nname = \"a\"\ntype = \"linux\"\nsize = \"rest\"\n";
    assert_eq!(field_error(no_size, "disk_size"), Problem::MissingDiskSize);
}

#[test]
fn sizes() {
    assert_eq!(parse_size("5GiB"), Ok(5 * GIB));
    assert_eq!(parse_size("512MiB"), Ok(512 * MIB));
    assert_eq!(parse_size(" 4 g "), Ok(4 * GIB));
    assert_eq!(parse_size("7"), Ok(7));
    assert_eq!(parse_size("7B"), Ok(7));
    assert_eq!(parse_size("3kib"), Ok(3072));
    assert_eq!(parse_size("2TiB"), Ok(2 << 40));
    for bad in ["", "GiB", "1.5GiB", "-1", "5 GiBs", "five", "0x10"] {
        assert!(
            matches!(parse_size(bad), Err(SizeError::Syntax(_))),
            "{bad}"
        );
    }
    assert!(matches!(parse_size("5GB"), Err(SizeError::DecimalUnit(_))));
    assert!(matches!(
        parse_size("16777216TiB"),
        Err(SizeError::Overflow(_))
    ));
    assert!(matches!(
        parse_size("99999999999999999999"),
        Err(SizeError::Overflow(_))
    ));
}

#[test]
fn types_and_contents() {
    assert_eq!(parse_type("esp"), Ok(ESP_TYPE));
    assert_eq!(
        parse_type("Linux-Root-X86-64").unwrap().to_string(),
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
    );
    assert_eq!(
        parse_type("swap").unwrap().to_string(),
        "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
    );
    assert_eq!(
        parse_type("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        Ok(ESP_TYPE)
    );
    assert_eq!(parse_type("efi"), Err(Problem::UnknownType("efi".into())));
    assert_eq!(
        parse_type("00000000-0000-0000-0000-000000000000"),
        Err(Problem::NilType)
    );

    let base = Path::new("/b");
    let digest = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(parse_content("empty", base), Ok(ContentSpec::Empty));
    assert_eq!(
        parse_content("payload:system", base),
        Ok(ContentSpec::Payload("system".into()))
    );
    assert_eq!(
        parse_content("layer:3", base),
        Ok(ContentSpec::Layer(LayerRef::Index(3)))
    );
    assert_eq!(
        parse_content(&format!("layer:{digest}"), base),
        Ok(ContentSpec::Layer(LayerRef::Digest(digest.clone())))
    );
    assert_eq!(
        parse_content("file:a/b.img", base),
        Ok(ContentSpec::File("/b/a/b.img".into()))
    );
    assert_eq!(
        parse_content("file:/abs.img", base),
        Ok(ContentSpec::File("/abs.img".into()))
    );
    assert_eq!(
        parse_content("inline:node=1:a", base),
        Ok(ContentSpec::Inline(b"node=1:a".to_vec().into()))
    );
    assert_eq!(
        parse_content("inline:", base),
        Ok(ContentSpec::Inline(Vec::new().into()))
    );
    assert_eq!(
        parse_content("base64:AAEC/w==", base),
        Ok(ContentSpec::Inline(vec![0, 1, 2, 255].into()))
    );
    let err = parse_content("base64:not base64!", base).unwrap_err();
    assert!(err.to_string().contains("not valid base64"), "{err}");
    for bad in [
        "",
        "inline",
        "base64",
        "base64:AAE",
        "empty:",
        "nothing",
        "payload:",
        "file:",
        "layer:",
        "layer:-1",
        "layer:x",
        "layer:sha256:abc",
        "layer:99999999999999999999999",
        "Payload:system",
    ] {
        assert!(
            matches!(parse_content(bad, base), Err(Problem::BadContent(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn esp_files_of_the_monogon_preset() {
    let preset = |files: &[(&str, &str)]| MonogonPreset {
        esp_files: files
            .iter()
            .map(|(p, c)| (p.to_string(), parse_content(c, Path::new("")).unwrap()))
            .collect(),
        ..MonogonPreset::default()
    };
    let spec =
        LayoutSpec::monogon_checked(&preset(&[("metropolis/parameters.pb", "base64:CgRub2Rl")]))
            .unwrap();
    let ContentSpec::Fat32 { files, .. } = &spec.partitions[0].content else {
        panic!("the ESP is FAT32");
    };
    assert_eq!(files.len(), 3);
    assert_eq!(
        files[2],
        (
            "metropolis/parameters.pb".to_owned(),
            ContentSpec::Inline(b"\n\x04node".to_vec().into())
        )
    );
    // Extra files change the layout hash; none keeps the preset's.
    assert_ne!(
        spec.layout_hash(),
        LayoutSpec::monogon(&MonogonPreset::default()).layout_hash()
    );
    assert_eq!(
        LayoutSpec::monogon(&preset(&[])).layout_hash(),
        LayoutSpec::monogon(&MonogonPreset::default()).layout_hash()
    );

    // A clash with the preset's own files, and bad names, are named by
    // their place among the extra files.
    let err = LayoutSpec::monogon_checked(&preset(&[
        ("a", "inline:x"),
        ("efi/boot/bootx64.efi", "inline:x"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("monogon preset: esp_files[1].path") && err.contains("already a file"),
        "{err}"
    );
    for (bad, why) in [
        ("a/b*c", "'*'"),
        ("x/EFI", "already a file"),
        ("EFI/metropolis/boot-a.efi/x", "already a file"),
        ("trailing.", "ends with a space or a dot"),
    ] {
        let err = LayoutSpec::monogon_checked(&preset(&[("x", "inline:"), (bad, "inline:")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("esp_files[1].path") && err.contains(why),
            "{bad}: {err}"
        );
    }
    let long = "n".repeat(256);
    let err = LayoutSpec::monogon_checked(&preset(&[(&long, "inline:")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("esp_files[0].path") && err.contains("256 UTF-16"),
        "{err}"
    );
}

const ONE: &str = "disk_size = \"64MiB\"\n";

fn with_parts(parts: &[&str]) -> String {
    let mut text = ONE.to_owned();
    for p in parts {
        text.push_str("[[partitions]]\n");
        text.push_str(p);
        text.push('\n');
    }
    text
}

#[test]
fn bad_toml_and_unknown_fields() {
    let msg = toml_error("disk_size = \"64MiB\"\n[[partitions]\n");
    assert!(msg.contains("line 2"), "{msg}");
    let msg = toml_error("disk_size = \"64MiB\"\ndisk_sise = 1\n");
    assert!(msg.contains("disk_sise"), "{msg}");
    let msg = toml_error(&with_parts(&[
        "name = \"a\"\ntype = \"linux\"\nsize = \"1MiB\"\nsizes = 1",
    ]));
    assert!(msg.contains("sizes"), "{msg}");
    let msg = toml_error(&with_parts(&[
        "name = \"a\"\ntype = \"esp\"\nsize = \"8MiB\"\nfat32 = { label = \"A\", files = [{ path = \"x\", content = \"empty\", mode = 1 }] }",
    ]));
    assert!(msg.contains("mode"), "{msg}");
    let msg = toml_error(&with_parts(&["name = \"a\"\nsize = \"1MiB\""]));
    assert!(msg.contains("type"), "{msg}");
    let msg = toml_error(&with_parts(&[
        "name = 3\ntype = \"linux\"\nsize = \"1MiB\"",
    ]));
    assert!(msg.contains("name") || msg.contains("string"), "{msg}");
}

#[test]
fn bad_values_name_their_field() {
    let p = |size: &str| format!("name = \"a\"\ntype = \"linux\"\nsize = {size}");
    assert!(matches!(
        field_error(&with_parts(&[&p("\"12 parsecs\"")]), "partitions[0].size"),
        Problem::BadSize(SizeError::Syntax(_))
    ));
    assert_eq!(
        field_error(&with_parts(&[&p("0")]), "partitions[0].size"),
        Problem::ZeroSize
    );
    assert!(matches!(
        field_error(&with_parts(&[&p("-5")]), "partitions[0].size"),
        Problem::BadSize(SizeError::Syntax(_))
    ));
    assert!(toml_error(&with_parts(&[&p("1.5")])).contains("line"));
    assert!(matches!(
        field_error(
            &with_parts(&["name = \"a\\u0000b\"\ntype = \"linux\"\nsize = 1"]),
            "partitions[0].name"
        ),
        Problem::NulInName(_)
    ));
    assert!(matches!(
        field_error("disk_size = \"lots\"\n", "disk_size"),
        Problem::BadSize(_)
    ));
    assert_eq!(
        field_error("disk_size = 1000\n", "disk_size"),
        Problem::BadDiskSize(1000)
    );
    assert_eq!(
        field_error("disk_size = 1024\n", "disk_size"),
        Problem::BadDiskSize(1024)
    );
    assert_eq!(
        field_error(
            &with_parts(&["name = \"a\"\ntype = \"ext4\"\nsize = \"1MiB\""]),
            "partitions[0].type"
        ),
        Problem::UnknownType("ext4".into())
    );
    let msg = parse(&with_parts(&[
        "name = \"a\"\ntype = \"ext4\"\nsize = \"1MiB\"",
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("linux-root-x86-64"),
        "lists the aliases: {msg}"
    );
    assert_eq!(
        field_error(
            &with_parts(&["name = \"\"\ntype = \"linux\"\nsize = \"1MiB\""]),
            "partitions[0].name"
        ),
        Problem::EmptyName
    );
    let long = format!(
        "name = \"{}\"\ntype = \"linux\"\nsize = \"1MiB\"",
        "n".repeat(37)
    );
    assert!(matches!(
        field_error(&with_parts(&[&long]), "partitions[0].name"),
        Problem::NameTooLong { units: 37, .. }
    ));
    let fits = format!(
        "name = \"{}\"\ntype = \"linux\"\nsize = \"1MiB\"",
        "n".repeat(36)
    );
    parse(&with_parts(&[&fits])).unwrap();
    let a = "name = \"a\"\ntype = \"linux\"\nsize = \"1MiB\"";
    let b = "name = \"b\"\ntype = \"linux\"\nsize = \"1MiB\"";
    assert_eq!(
        field_error(&with_parts(&[a, b, a]), "partitions[2].name"),
        Problem::DuplicateName {
            name: "a".into(),
            first: 1
        }
    );
    let rest = |n: &str| format!("name = \"{n}\"\ntype = \"linux\"\nsize = \"rest\"");
    assert_eq!(
        field_error(
            &with_parts(&[&rest("x"), a, &rest("y")]),
            "partitions[2].size"
        ),
        Problem::MultipleRest { first: 1 }
    );
    let both = "name = \"a\"\ntype = \"esp\"\nsize = \"8MiB\"\ncontent = \"empty\"\nfat32 = { label = \"A\" }";
    assert_eq!(
        field_error(&with_parts(&[both]), "partitions[0].content"),
        Problem::ContentAndFat32
    );
    let content = "name = \"a\"\ntype = \"linux\"\nsize = \"1MiB\"\ncontent = \"blob:x\"";
    assert!(matches!(
        field_error(&with_parts(&[content]), "partitions[0].content"),
        Problem::BadContent(_)
    ));
    let fat = |files: &str| {
        format!("name = \"a\"\ntype = \"esp\"\nsize = \"8MiB\"\nfat32 = {{ label = \"A\", files = [{files}] }}")
    };
    assert!(matches!(
        field_error(
            &with_parts(&[&fat("{ path = \"x\", content = \"nope\" }")]),
            "partitions[0].fat32.files[0].content"
        ),
        Problem::BadContent(_)
    ));
    for bad in [
        "\"\"",
        "\"/x\"",
        "\"x/\"",
        "\"a//b\"",
        "\"a/../b\"",
        "\"./a\"",
    ] {
        let text = with_parts(&[&fat(&format!("{{ path = {bad}, content = \"empty\" }}"))]);
        assert!(
            matches!(
                field_error(&text, "partitions[0].fat32.files[0].path"),
                Problem::BadPath { .. }
            ),
            "{bad}"
        );
    }
    for (first, second) in [("A/b", "a/B"), ("a", "a/b"), ("a/b", "A")] {
        let files = format!(
            "{{ path = \"{first}\", content = \"empty\" }}, {{ path = \"{second}\", content = \"empty\" }}"
        );
        assert!(matches!(
            field_error(
                &with_parts(&[&fat(&files)]),
                "partitions[0].fat32.files[1].path"
            ),
            Problem::BadPath { .. }
        ));
    }
    for label in ["\"TWELVE_CHARS\"", "\"ÄÖÜ\""] {
        let text = with_parts(&[&format!(
            "name = \"a\"\ntype = \"esp\"\nsize = \"8MiB\"\nfat32 = {{ label = {label} }}"
        )]);
        assert!(matches!(
            field_error(&text, "partitions[0].fat32.label"),
            Problem::BadLabel(_)
        ));
    }
}

#[test]
fn partitions_that_do_not_fit() {
    // 64 MiB disk: 62 MiB usable after alignment and the backup GPT.
    let p = |n: &str, size: &str| format!("name = \"{n}\"\ntype = \"linux\"\nsize = \"{size}\"");
    let ok = parse(&with_parts(&[&p("a", "62MiB")])).unwrap();
    assert_eq!(lbas(&ok), [(2048, 2048 + 62 * 2048 - 1)]);
    let problem = field_error(&with_parts(&[&p("a", "63MiB")]), "partitions[0].size");
    assert_eq!(
        problem,
        Problem::DoesNotFit {
            need: 63 * MIB,
            largest: 63 * MIB - 33 * 512
        }
    );
    // A rest partition takes the largest gap, so nothing fits after it.
    assert!(matches!(
        field_error(
            &with_parts(&[&p("a", "rest"), &p("b", "1MiB")]),
            "partitions[1].size"
        ),
        Problem::DoesNotFit { .. }
    ));
    // ... and a rest partition needs at least 1 MiB.
    assert_eq!(
        field_error(
            &with_parts(&[&p("a", "62MiB"), &p("b", "rest")]),
            "partitions[1].size"
        ),
        Problem::DoesNotFit {
            need: MIB,
            largest: 2015 * 512
        }
    );
    // Sizes are rounded up to blocks and starts up to MiB.
    let odd = parse(&with_parts(&[&p("a", "1000"), &p("b", "1MiB")])).unwrap();
    assert_eq!(lbas(&odd), [(2048, 2049), (4096, 6143)]);
}

#[test]
fn too_many_partitions() {
    let parts: Vec<String> = (0..129)
        .map(|i| format!("name = \"p{i}\"\ntype = \"linux\"\nsize = \"1KiB\""))
        .collect();
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let text = with_parts(&refs).replace("64MiB", "1GiB");
    assert_eq!(
        field_error(&text, "partitions"),
        Problem::TooManyPartitions(129)
    );
    let text = with_parts(&refs[..128]).replace("64MiB", "1GiB");
    assert_eq!(parse(&text).unwrap().place().unwrap().len(), 128);
}

#[test]
fn api_only_errors() {
    let mut spec = LayoutSpec {
        disk_size: 8 * MIB,
        partitions: vec![PartitionSpec {
            name: "a".into(),
            type_guid: ESP_TYPE,
            size: Size::Bytes(MIB),
            content: ContentSpec::Inline(vec![1u8; MIB as usize + 1].into()),
        }],
    };
    let err = spec.validate("layout").unwrap_err();
    let SpecError::Field {
        field,
        problem: Problem::ContentTooLarge { len, size, .. },
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(
        (field.as_str(), *len, *size),
        ("partitions[0].content", MIB + 1, MIB)
    );
    spec.partitions[0].content = ContentSpec::Fat32 {
        label: "L".into(),
        files: vec![(
            "x".into(),
            ContentSpec::Fat32 {
                label: "M".into(),
                files: vec![],
            },
        )],
    };
    let err = spec.validate("layout").unwrap_err().to_string();
    assert_eq!(err, "layout: partitions[0].fat32.files[0].content: a file in a FAT32 file system cannot itself be a FAT32 file system");
    spec.partitions[0].content = ContentSpec::Empty;
    spec.partitions[0].type_guid = Uuid::nil();
    assert!(spec
        .validate("layout")
        .unwrap_err()
        .to_string()
        .contains("partitions[0].type"));
}

#[test]
fn canonical_form_is_stable() {
    let spec = LayoutSpec {
        disk_size: 8 * MIB,
        partitions: vec![
            PartitionSpec {
                name: "E\"S\nP".into(),
                type_guid: ESP_TYPE,
                size: Size::Bytes(2 * MIB),
                content: ContentSpec::Fat32 {
                    label: "L".into(),
                    files: vec![
                        ("a/b".into(), ContentSpec::Inline(b"hi".to_vec().into())),
                        ("c".into(), ContentSpec::File("/h/c".into())),
                    ],
                },
            },
            PartitionSpec {
                name: "r".into(),
                type_guid: METROPOLIS_DATA_TYPE,
                size: Size::Rest,
                content: ContentSpec::Layer(LayerRef::Index(2)),
            },
        ],
    };
    // This text is hashed into every overlay's base identity: changing
    // it makes existing overlays refuse to open.
    assert_eq!(
        spec.canonical(),
        "ocidisk layout v1\n\
         disk_size 8388608\n\
         partition \"E\\\"S\\nP\" type c12a7328-f81f-11d2-ba4b-00a0c93ec93b size 2097152\n\
         content fat32 label \"L\" files 2\n\
         file \"a/b\"\n\
         content inline 2 sha256 8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4\n\
         file \"c\"\n\
         content file \"/h/c\"\n\
         partition \"r\" type 9eeec464-6885-414a-b278-4305c51f7966 size rest\n\
         content layer index 2\n"
    );
    let mut other = spec.clone();
    other.partitions[1].content = ContentSpec::Layer(LayerRef::Index(3));
    assert_ne!(spec.layout_hash(), other.layout_hash());
    let mut other = spec.clone();
    other.disk_size += 512;
    assert_ne!(spec.layout_hash(), other.layout_hash());
    assert_eq!(spec.layout_hash(), spec.clone().layout_hash());
}

proptest! {
    /// Whatever fits is placed aligned, in the usable range, without
    /// overlap and at least as large as asked; the GPT accepts it.
    #[test]
    fn placement_is_sound(
        disk_mib in 3u64..256,
        sizes in prop::collection::vec(prop_oneof![
            (1u64..40 * MIB).prop_map(Size::Bytes),
            Just(Size::Rest),
        ], 0..8),
    ) {
        let mut saw_rest = false;
        let partitions: Vec<PartitionSpec> = sizes
            .into_iter()
            .filter(|s| !(matches!(s, Size::Rest) && std::mem::replace(&mut saw_rest, true)))
            .enumerate()
            .map(|(i, size)| PartitionSpec {
                name: format!("p{i}"),
                type_guid: ESP_TYPE,
                size,
                content: ContentSpec::Empty,
            })
            .collect();
        let spec = LayoutSpec { disk_size: disk_mib * MIB, partitions };
        let Ok(placed) = spec.place() else { return Ok(()) };
        let blocks = spec.disk_size / 512;
        let mut parts = Vec::new();
        for (i, (p, at)) in spec.partitions.iter().zip(&placed).enumerate() {
            prop_assert_eq!(at.first_lba % 2048, 0);
            prop_assert!(at.first_lba >= gpt::FIRST_USABLE_LBA);
            prop_assert!(at.last_lba <= gpt::last_usable_lba(blocks));
            match p.size {
                Size::Bytes(n) => prop_assert_eq!(at.len(), n.div_ceil(512) * 512),
                Size::Rest => prop_assert_eq!(at.len() % MIB, 0),
            }
            parts.push(gpt::GptPartition {
                name: p.name.clone(),
                type_guid: p.type_guid,
                guid: Uuid::from_u128(i as u128 + 1),
                first_lba: at.first_lba,
                last_lba: at.last_lba,
            });
        }
        // The GPT builder checks overlap and range independently.
        prop_assert!(gpt::build(spec.disk_size, Uuid::from_u128(9), &parts).is_ok());
    }
}
