//! The three readers on generated photos and annotations: what they take, and every reason they
//! reject for, counted.

use super::*;
use std::fs;

/// A `w × h` PNG whose pixels depend on `seed` (so photos differ in content).
fn photo(dir: &Path, name: &str, w: u32, h: u32, seed: u8) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([seed, (x % 251) as u8, (y % 241) as u8]));
    img.save(dir.join(name)).unwrap();
}

fn map() -> ClassMap {
    ClassMap(
        [("con_mascarilla", "with_mask"), ("mascarilla_mal_puesta", "with_mask"), ("sin_mascarilla", "without_mask")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    )
}

fn voc(file: &str, size: Option<(u32, u32)>, objects: &[(&str, [f32; 4], bool)]) -> String {
    let size = size.map(|(w, h)| format!("<size><width>{w}</width><height>{h}</height><depth>3</depth></size>")).unwrap_or_default();
    let objs: String = objects
        .iter()
        .map(|(n, b, d)| {
            format!(
                "<object><name>{n}</name><difficult>{}</difficult><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>",
                u8::from(*d), b[0], b[1], b[2], b[3]
            )
        })
        .collect();
    format!("<annotation><folder>images</folder><filename>{file}</filename>{size}{objs}</annotation>")
}

#[test]
fn voc_reads_maps_clips_and_rejects_with_reasons() {
    let d = tempfile::tempdir().unwrap();
    let (ann, img) = (d.path().join("annotations"), d.path().join("images"));
    fs::create_dir_all(&ann).unwrap();
    fs::create_dir_all(&img).unwrap();
    for (i, n) in ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png"].iter().enumerate() {
        photo(&img, n, 64, 48, i as u8);
    }
    fs::write(img.join("garbage.png"), b"not a png").unwrap();
    let write = |name: &str, text: String| fs::write(ann.join(name), text).unwrap();
    // Two faces, one touching the right edge by 1 px (clipped), one difficult.
    write("a.xml", voc("a.png", Some((64, 48)), &[("con_mascarilla", [1.0, 2.0, 65.0, 20.0], false), ("sin_mascarilla", [10.0, 20.0, 30.0, 40.0], true)]));
    write("b.xml", voc("b.png", None, &[("mascarilla_mal_puesta", [0.0, 0.0, 10.0, 10.0], false)]));
    write("c.xml", voc("c.png", Some((64, 48)), &[("gorro", [0.0, 0.0, 10.0, 10.0], false)]));
    write("d.xml", voc("d.png", Some((64, 48)), &[("con_mascarilla", [30.0, 10.0, 20.0, 20.0], false)]));
    write("e.xml", voc("e.png", Some((64, 48)), &[("con_mascarilla", [0.0, 0.0, 90.0, 20.0], false)]));
    write("f.xml", voc("f.png", Some((100, 48)), &[]));
    write("g.xml", voc("missing.png", Some((64, 48)), &[]));
    write("h.xml", voc("garbage.png", None, &[]));
    write("i.xml", "<annotation><filename>a.png</filename".into());
    write("j.xml", voc("a.png", Some((64, 48)), &[]));
    write("k.xml", voc("../a.png", None, &[]));
    fs::write(ann.join(".hidden.xml"), "ignored").unwrap();

    let set = read_voc(&ann, &img, &map()).unwrap();
    let images: Vec<&str> = set.photos.iter().map(|p| p.image.to_str().unwrap()).collect();
    assert_eq!(images, ["a.png", "b.png"]);
    let a = &set.photos[0];
    assert_eq!((a.width, a.height), (64, 48));
    assert_eq!(a.faces[0], Labelled { class: "with_mask".into(), bbox: [1.0, 2.0, 64.0, 20.0], difficult: false });
    assert_eq!(a.faces[1].class, "without_mask");
    assert!(a.faces[1].difficult);
    assert_eq!(set.photos[1].faces[0].class, "with_mask");
    let counts: BTreeMap<&str, usize> = set.counts().into_iter().map(|(r, n)| (r.name(), n)).collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("bad_box", 2),
            ("duplicate", 1),
            ("malformed", 2),
            ("missing_image", 1),
            ("size_mismatch", 1),
            ("unknown_class", 1),
            ("unreadable_image", 1),
        ]),
        "{:#?}",
        set.rejected
    );
    let why = |src: &str| set.rejected.iter().find(|r| r.source.ends_with(src)).unwrap().detail.clone();
    assert!(why("c.xml").contains("gorro"));
    assert!(why("e.xml").contains("outside"));
    assert!(why("f.xml").contains("100×48") && why("f.xml").contains("64×48"));
    assert_eq!(set.faces_per_class(), BTreeMap::from([("with_mask".into(), 2), ("without_mask".into(), 1)]));
}

#[test]
fn yolo_converts_fractions_to_pixels_and_keeps_background_photos() {
    let d = tempfile::tempdir().unwrap();
    let (lab, img) = (d.path().join("labels"), d.path().join("images"));
    fs::create_dir_all(&lab).unwrap();
    fs::create_dir_all(&img).unwrap();
    for (i, n) in ["a.png", "b.png", "c.png", "bg.png"].iter().enumerate() {
        photo(&img, n, 100, 50, i as u8);
    }
    fs::write(lab.join("a.txt"), "0 0.5 0.5 0.2 0.4\n2 0.1 0.1 0.1 0.1\n\n").unwrap();
    fs::write(lab.join("b.txt"), "7 0.5 0.5 0.2 0.2\n").unwrap();
    fs::write(lab.join("c.txt"), "0 0.5 0.5\n").unwrap();
    fs::write(lab.join("orphan.txt"), "0 0.5 0.5 0.1 0.1\n").unwrap();
    let names: Vec<String> = ["con_mascarilla", "mascarilla_mal_puesta", "sin_mascarilla"].map(String::from).to_vec();
    let set = read_yolo(&lab, &img, &names, &map()).unwrap();
    let images: Vec<&str> = set.photos.iter().map(|p| p.image.to_str().unwrap()).collect();
    assert_eq!(images, ["a.png", "bg.png"]);
    let a = &set.photos[0].faces;
    assert_eq!(a[0].class, "with_mask");
    assert_eq!(a[0].bbox, [40.0, 15.0, 60.0, 35.0]);
    assert_eq!(a[1].class, "without_mask");
    assert!((a[1].bbox[0] - 5.0).abs() < 1e-4 && (a[1].bbox[3] - 7.5).abs() < 1e-4);
    assert!(set.photos[1].faces.is_empty());
    let counts: BTreeMap<&str, usize> = set.counts().into_iter().map(|(r, n)| (r.name(), n)).collect();
    assert_eq!(counts, BTreeMap::from([("malformed", 1), ("missing_image", 1), ("unknown_class", 1)]), "{:#?}", set.rejected);
}

#[test]
fn coco_reads_xywh_boxes_and_rejects_what_does_not_fit() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("images");
    fs::create_dir_all(&img).unwrap();
    photo(&img, "a.png", 80, 60, 1);
    photo(&img, "b.png", 80, 60, 2);
    photo(&img, "c.png", 80, 60, 3);
    let json = serde_json::json!({
        "info": {"description": "extra fields are ignored"},
        "images": [
            {"id": 1, "file_name": "a.png", "width": 80, "height": 60, "license": 3},
            {"id": 2, "file_name": "b.png", "width": 80, "height": 60},
            {"id": 3, "file_name": "c.png", "width": 80, "height": 60},
            {"id": 4, "file_name": "nope.png", "width": 80, "height": 60}
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 30], "iscrowd": 0, "area": 600},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [40, 5, 20, 30], "iscrowd": 1},
            {"id": 12, "image_id": 2, "category_id": 9, "bbox": [10, 5, 20, 30]},
            {"id": 13, "image_id": 3, "category_id": 1, "bbox": [10, 5, 0, 30]},
            {"id": 14, "image_id": 99, "category_id": 1, "bbox": [10, 5, 20, 30]}
        ],
        "categories": [{"id": 1, "name": "con_mascarilla"}, {"id": 2, "name": "sin_mascarilla"}]
    });
    let path = d.path().join("coco.json");
    fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let set = read_coco(&path, &img, &map()).unwrap();
    assert_eq!(set.photos.len(), 1);
    let a = &set.photos[0];
    assert_eq!(a.faces[0].bbox, [10.0, 5.0, 30.0, 35.0]);
    assert!(!a.faces[0].difficult && a.faces[1].difficult && a.faces[1].class == "without_mask");
    let counts: BTreeMap<&str, usize> = set.counts().into_iter().map(|(r, n)| (r.name(), n)).collect();
    assert_eq!(
        counts,
        BTreeMap::from([("bad_box", 1), ("malformed", 1), ("missing_image", 1), ("unknown_class", 1)]),
        "{:#?}",
        set.rejected
    );
    // A file that is not COCO fails as a whole, naming the file and the missing field.
    fs::write(&path, br#"{"images": [], "annotations": []}"#).unwrap();
    let e = read_coco(&path, &img, &map()).unwrap_err().to_string();
    assert!(e.contains("coco.json") && e.contains("categories"), "{e}");
}

#[test]
fn the_split_follows_content_and_the_seed() {
    let d = tempfile::tempdir().unwrap();
    let photos: Vec<Photo> = (0..200u8)
        .map(|i| {
            let name = format!("p{i}.png");
            photo(d.path(), &name, 8, 8, i);
            Photo { image: name.into(), width: 8, height: 8, faces: Vec::new() }
        })
        .collect();
    let a = split(&photos, d.path(), 0.2, 42).unwrap();
    let n = a.iter().filter(|v| **v).count();
    assert!((20..=60).contains(&n), "{n} of 200 in validation");
    // The same photos in another order and among others keep their side.
    let mut reversed = photos.clone();
    reversed.reverse();
    let b = split(&reversed, d.path(), 0.2, 42).unwrap();
    assert!(a.iter().zip(b.iter().rev()).all(|(x, y)| x == y));
    assert_ne!(a, split(&photos, d.path(), 0.2, 7).unwrap(), "another seed, another split");
}

#[test]
fn boxes_are_checked_and_clipped() {
    assert_eq!(check_box([-1.5, 0.0, 10.0, 10.0], 20.0, 20.0).unwrap(), [0.0, 0.0, 10.0, 10.0]);
    assert!(check_box([-3.0, 0.0, 10.0, 10.0], 20.0, 20.0).is_err());
    assert!(check_box([0.0, 0.0, f32::NAN, 10.0], 20.0, 20.0).is_err());
    assert!(check_box([5.0, 5.0, 5.0, 10.0], 20.0, 20.0).is_err());
    assert!(check_box([19.5, 0.0, 21.0, 10.0], 20.0, 20.0).is_err(), "half a pixel inside");
}
