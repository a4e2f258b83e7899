use super::*;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageEncoder, Rgb};

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 95).encode_image(img).unwrap();
    out
}

/// Inserts an EXIF APP1 segment carrying `orientation` right after SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0*\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn close(a: [u8; 3], b: [u8; 3], tol: i32) -> bool {
    (0..3).all(|k| (a[k] as i32 - b[k] as i32).abs() <= tol)
}

#[test]
fn every_rejection_reason_from_a_planted_file() {
    let lim = Limits::default();
    let ok = jpeg(&RgbImage::from_pixel(64, 48, Rgb([10, 200, 30])));
    assert!(decode(&ok, &lim).is_ok());

    assert_eq!(decode(&[], &lim).unwrap_err().code(), "empty");
    assert_eq!(decode(&ok[..ok.len() * 2 / 3], &lim).unwrap_err().code(), "truncated");
    assert_eq!(decode(b"hello, I am text", &lim).unwrap_err().code(), "not_an_image");
    assert_eq!(decode(&maskflow_synth::heif_stub(), &lim).unwrap_err().code(), "unsupported_format");
    let bomb = decode(&maskflow_synth::png_bomb_header(60_000, 60_000), &lim).unwrap_err();
    assert_eq!(bomb.code(), "too_large", "{bomb}");
    // Within max_side but over max_pixels, checked from the header.
    let small_lim = Limits { max_pixels: 1000, max_side: 30_000 };
    assert_eq!(decode(&ok, &small_lim).unwrap_err().code(), "too_large");

    // Corrupt: a PNG with a broken chunk checksum / garbage after a valid signature.
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&[0u8; 12], 2, 2, image::ExtendedColorType::Rgb8)
        .unwrap();
    let mut bad = png.clone();
    let n = bad.len();
    bad[n - 20] ^= 0xFF; // inside IDAT
    let r = decode(&bad, &lim).unwrap_err();
    assert!(matches!(r.code(), "corrupt" | "truncated"), "{r}");
    let mut garbage = b"\x89PNG\r\n\x1a\n".to_vec();
    garbage.extend_from_slice(&[0x13; 40]);
    assert_eq!(decode(&garbage, &lim).unwrap_err().code(), "corrupt");
    // Truncated PNG.
    assert_eq!(decode(&png[..png.len() - 16], &lim).unwrap_err().code(), "truncated");
}

#[test]
fn sniff_ignores_extension_and_names_formats() {
    let png = {
        let mut v = Vec::new();
        image::codecs::png::PngEncoder::new(&mut v)
            .write_image(&[0u8; 3], 1, 1, image::ExtendedColorType::Rgb8)
            .unwrap();
        v
    };
    assert_eq!(sniff(&png), Sniffed::Supported(Format::Png));
    assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Sniffed::Supported(Format::WebP));
    assert_eq!(sniff(&maskflow_synth::heif_stub()), Sniffed::Unsupported("heif"));
    assert_eq!(sniff(b"abc"), Sniffed::Unknown);
}

#[test]
fn exif_orientation_is_applied() {
    // 32×16: left half red, right half blue. Orientation 6 = rotate 90° clockwise to display.
    let img = RgbImage::from_fn(32, 16, |x, _| if x < 16 { Rgb([220, 20, 20]) } else { Rgb([20, 20, 220]) });
    let d = decode(&with_exif_orientation(&jpeg(&img), 6), &Limits::default()).unwrap();
    assert_eq!((d.width, d.height), (16, 32));
    let rgb = to_rgb8(d.image, [0, 0, 0]);
    assert!(close(rgb.get_pixel(8, 4).0, [220, 20, 20], 30), "{:?}", rgb.get_pixel(8, 4));
    assert!(close(rgb.get_pixel(8, 28).0, [20, 20, 220], 30), "{:?}", rgb.get_pixel(8, 28));
    // Orientation 3 = 180°: red goes right.
    let d = decode(&with_exif_orientation(&jpeg(&img), 3), &Limits::default()).unwrap();
    let rgb = to_rgb8(d.image, [0, 0, 0]);
    assert_eq!((rgb.width(), rgb.height()), (32, 16));
    assert!(close(rgb.get_pixel(28, 8).0, [220, 20, 20], 30));
}

#[test]
fn alpha_is_composited_on_the_background() {
    let rgba = image::RgbaImage::from_fn(2, 1, |x, _| {
        if x == 0 {
            image::Rgba([200, 100, 0, 0])
        } else {
            image::Rgba([200, 100, 0, 128])
        }
    });
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(rgba.as_raw(), 2, 1, image::ExtendedColorType::Rgba8)
        .unwrap();
    let rgb = to_rgb8(decode(&png, &Limits::default()).unwrap().image, [255, 255, 255]);
    assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
    // 200·128/255 + 255·127/255 = 100.4 + 127.0 → 227; 100·128/255 + 127 → 177; 0 + 127 → 127
    assert_eq!(rgb.get_pixel(1, 0).0, [227, 177, 127]);
}

#[test]
fn sixteen_bit_gray_and_palette_pngs_become_rgb8() {
    // 16-bit RGB: 0xFFFF → 255, 0x8080 → 128, 0x0000 → 0.
    let mut png16 = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png16, 1, 1);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Sixteen);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[0xFF, 0xFF, 0x80, 0x80, 0x00, 0x00]).unwrap();
    }
    let rgb = to_rgb8(decode(&png16, &Limits::default()).unwrap().image, [0, 0, 0]);
    assert_eq!(rgb.get_pixel(0, 0).0, [255, 128, 0]);

    // Palette with a transparent entry.
    let mut pal = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut pal, 2, 1);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(vec![10, 20, 30, 250, 240, 230]);
        enc.set_trns(vec![255, 0]);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[0, 1]).unwrap();
    }
    let rgb = to_rgb8(decode(&pal, &Limits::default()).unwrap().image, [0, 0, 0]);
    assert_eq!(rgb.get_pixel(0, 0).0, [10, 20, 30]);
    assert_eq!(rgb.get_pixel(1, 0).0, [0, 0, 0], "fully transparent → background");

    // Gray.
    let mut gray = Vec::new();
    image::codecs::png::PngEncoder::new(&mut gray).write_image(&[77u8], 1, 1, image::ExtendedColorType::L8).unwrap();
    let rgb = to_rgb8(decode(&gray, &Limits::default()).unwrap().image, [0, 0, 0]);
    assert_eq!(rgb.get_pixel(0, 0).0, [77, 77, 77]);
}

#[test]
fn resize_geometry_on_stripes() {
    // 40×20 in four 10-px vertical stripes A B C D.
    let cols = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]];
    let img = RgbImage::from_fn(40, 20, |x, _| Rgb(cols[(x / 10) as usize]));
    let mut r = Resizer::default();

    // Squish to 8×8: each stripe becomes 2 columns.
    let s = r.square(&img, 8, ResizeMode::Squish, Filter::Nearest, [0, 0, 0]).unwrap();
    for (x, c) in [(0, 0), (3, 1), (4, 2), (7, 3)] {
        assert_eq!(s.get_pixel(x, 4).0, cols[c], "squish x={x}");
    }
    // Crop: the centre 20×20 is B | C.
    let c = r.square(&img, 8, ResizeMode::Crop, Filter::Nearest, [0, 0, 0]).unwrap();
    assert_eq!(c.get_pixel(0, 0).0, cols[1]);
    assert_eq!(c.get_pixel(3, 7).0, cols[1]);
    assert_eq!(c.get_pixel(4, 0).0, cols[2]);
    assert_eq!(c.get_pixel(7, 7).0, cols[2]);
    // Pad: 8×4 content centred vertically (rows 2..6), pad colour above and below.
    let p = r.square(&img, 8, ResizeMode::Pad, Filter::Nearest, [9, 9, 9]).unwrap();
    assert_eq!(p.get_pixel(0, 0).0, [9, 9, 9]);
    assert_eq!(p.get_pixel(0, 1).0, [9, 9, 9]);
    assert_eq!(p.get_pixel(0, 2).0, cols[0]);
    assert_eq!(p.get_pixel(7, 5).0, cols[3]);
    assert_eq!(p.get_pixel(7, 6).0, [9, 9, 9]);
    // A filtered (bilinear) squish keeps stripe centres exact.
    let b = r.square(&img, 16, ResizeMode::Squish, Filter::Bilinear, [0, 0, 0]).unwrap();
    assert_eq!(b.get_pixel(1, 8).0, cols[0]);
    assert_eq!(b.get_pixel(14, 8).0, cols[3]);
}

#[test]
fn dhash_survives_reencoding_and_resizing_but_separates_pictures() {
    // Two different pictures: 10-px blocks of pseudo-random colours.
    let blocks = |salt: u32| {
        RgbImage::from_fn(120, 90, move |x, y| {
            let h = ((x / 10) * 31 + (y / 10) * 17 + salt).wrapping_mul(2_654_435_761);
            Rgb([(h >> 24) as u8, (h >> 16) as u8, (h >> 8) as u8])
        })
    };
    let (a, b) = (blocks(1), blocks(2));
    let mut r = Resizer::default();
    let ha = dhash(&a, &mut r).unwrap();
    let reenc = to_rgb8(decode(&jpeg(&a), &Limits::default()).unwrap().image, [0; 3]);
    let resized = r.square(&a, 60, ResizeMode::Squish, Filter::Bilinear, [0; 3]).unwrap();
    let resized = image::imageops::resize(&resized, 96, 72, image::imageops::FilterType::Triangle);
    assert!((ha ^ dhash(&reenc, &mut r).unwrap()).count_ones() <= 3);
    assert!((ha ^ dhash(&resized, &mut r).unwrap()).count_ones() <= 4);
    assert!((ha ^ dhash(&b, &mut r).unwrap()).count_ones() > 12);
}

#[test]
fn reduced_jpeg_decode_covers_the_needed_size_and_keeps_orientation() {
    // 400×300, left half red, right half blue, EXIF orientation 6 (rotate 90° clockwise).
    let img = RgbImage::from_fn(400, 300, |x, _| if x < 200 { Rgb([220, 20, 20]) } else { Rgb([20, 20, 220]) });
    let bytes = with_exif_orientation(&jpeg(&img), 6);
    let needed = |w, h| ResizeMode::Crop.needed_source(64, w, h);
    assert_eq!(needed(400, 300), (86, 64));
    let d = decode_reduced(&bytes, &Limits::default(), needed).unwrap();
    // 1/4 scale is the smallest that still covers 86×64 in stored orientation: 100×75, then rotated.
    assert_eq!((d.width, d.height), (75, 100));
    let rgb = to_rgb8(d.image, [0; 3]);
    assert!(close(rgb.get_pixel(37, 10).0, [220, 20, 20], 40), "{:?}", rgb.get_pixel(37, 10));
    assert!(close(rgb.get_pixel(37, 90).0, [20, 20, 220], 40), "{:?}", rgb.get_pixel(37, 90));
    // Nothing to gain: the full decode.
    let full = decode_reduced(&bytes, &Limits::default(), |w, h| (w, h)).unwrap();
    assert_eq!((full.width, full.height), (300, 400));
    // Other formats and truncated JPEGs take the validating path (and its rejection).
    assert_eq!(decode_reduced(&bytes[..bytes.len() / 2], &Limits::default(), needed).unwrap_err().code(), "truncated");
    assert_eq!(ResizeMode::Pad.needed_source(64, 400, 300), (64, 48));
}

#[test]
fn dct_denominator_is_the_largest_that_still_covers() {
    use crate::draft::dct_denominator;
    assert_eq!(dct_denominator(1600, 1200, 299, 224), 4); // 400×300 ≥ 299×224; 1/8 → 200×150 too small
    assert_eq!(dct_denominator(1800, 1800, 224, 224), 8); // 225×225
    assert_eq!(dct_denominator(1785, 1785, 224, 224), 8); // 1/8 rounds up to 224, as libjpeg does
    assert_eq!(dct_denominator(1784, 1784, 224, 224), 4); // 1/8 would give 223
    assert_eq!(dct_denominator(300, 300, 224, 224), 1);
}

#[test]
fn reduced_jpeg_decode_of_gray_and_damaged_files_agrees_with_the_full_decode() {
    // A grayscale JPEG decodes reduced, as luma.
    let gray = image::GrayImage::from_fn(320, 320, |x, y| image::Luma([((x / 40 + y / 40) % 2 * 200 + 20) as u8]));
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&gray).unwrap();
    let d = decode_reduced(&bytes, &Limits::default(), |_, _| (80, 80)).unwrap();
    assert_eq!((d.width, d.height), (80, 80));
    assert!(matches!(d.image, DynamicImage::ImageLuma8(_)));
    // Damaged entropy data (libjpeg would paper over it with a warning): the result is whatever the
    // validating full decode says, never libjpeg's guess.
    let img = RgbImage::from_fn(320, 240, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
    let good = jpeg(&img);
    let mut fell_back = 0;
    for at in [good.len() / 3, good.len() / 2, good.len() * 3 / 4] {
        let mut bad = good.clone();
        bad[at] = 0xFF;
        bad[at + 1] = 0xD4; // a stray marker inside the scan
        let reduced = decode_reduced(&bad, &Limits::default(), |_, _| (80, 60));
        let full = decode(&bad, &Limits::default());
        match (reduced, full) {
            (Ok(r), Ok(f)) => {
                if (r.width, r.height) == (f.width, f.height) {
                    fell_back += 1;
                    assert_eq!(to_rgb8(r.image, [0; 3]), to_rgb8(f.image, [0; 3]));
                }
            }
            (Err(r), Err(f)) => {
                fell_back += 1;
                assert_eq!(r.code(), f.code());
            }
            (r, f) => panic!("damage at {at}: reduced {:?} vs full {:?}", r.map(|_| ()), f.map(|_| ())),
        }
    }
    assert_eq!(fell_back, 3, "libjpeg's warnings on damaged scans must send the file to the full decode");
}

#[test]
fn face_regions_are_squares_clipped_to_the_photo() {
    use crate::face_region;
    // A 40 × 50 box, no margin: the 50-px square on its centre.
    assert_eq!(face_region(200, 200, [10.0, 20.0, 50.0, 70.0], 0.0), Some([5, 20, 55, 70]));
    // Margin 0.2 of the longer side per side: 50 · 1.4 = 70 px, from x = −5 (clipped to 0).
    assert_eq!(face_region(200, 200, [10.0, 20.0, 50.0, 70.0], 0.2), Some([0, 10, 65, 80]));
    // Fractional boxes still give whole squares inside the photo.
    for k in 0..20 {
        let o = k as f32 * 0.37;
        let [l, t, r, b] = face_region(500, 500, [100.0 + o, 120.3 + o, 171.6 + o, 201.2 + o], 0.1).unwrap();
        assert_eq!(r - l, b - t);
    }
    // Clipped at the edges; nothing inside, degenerate or non-finite boxes: none.
    assert_eq!(face_region(100, 100, [90.0, 90.0, 130.0, 130.0], 0.0), Some([90, 90, 100, 100]));
    assert_eq!(face_region(100, 100, [120.0, 120.0, 130.0, 130.0], 0.0), None);
    assert_eq!(face_region(100, 100, [10.0, 10.0, 10.0, 30.0], 0.0), None);
    assert_eq!(face_region(100, 100, [f32::NAN, 10.0, 20.0, 30.0], 0.0), None);
}
